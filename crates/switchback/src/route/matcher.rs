//! Which requests a route takes: a path condition, header conditions, a runtime fraction.

use std::fmt;

use http::header::{self, HeaderName};
use http::{HeaderMap, Request};
use regex::Regex;

use super::runtime::{self, Runtime};

/// The path condition, tested on the path without its query.
#[derive(Clone)]
pub(super) enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// Envoy's `connect_matcher`: plain CONNECT requests only, which have no path.
    Connect,
}

impl PathMatch {
    /// How much of `path` matched: the prefix's length for a prefix match, all of it otherwise.
    pub(super) fn matched_len(&self, path: &str) -> Option<usize> {
        match self {
            Self::Prefix(p) => path.starts_with(p.as_str()).then_some(p.len()),
            Self::Exact(p) => (path == p).then_some(path.len()),
            // A search, as Envoy's `safe_regex` is not: users anchor with `^...$` themselves.
            Self::Regex(re) => re.is_match(path).then_some(path.len()),
            Self::Connect => None,
        }
    }

    pub(super) fn is_prefix(&self) -> bool {
        matches!(self, Self::Prefix(_))
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(p) => write!(f, "prefix {p}"),
            Self::Exact(p) => write!(f, "path {p}"),
            Self::Regex(re) => write!(f, "regex {}", re.as_str()),
            Self::Connect => f.write_str("connect"),
        }
    }
}

impl fmt::Debug for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A header condition: present, or (with `exact`) equal to a value.
#[derive(Clone, Debug)]
pub(super) struct HeaderMatch {
    pub(super) name: HeaderName,
    pub(super) exact: Option<String>,
}

impl HeaderMatch {
    fn matches<B>(&self, req: &Request<B>) -> bool {
        let headers = req.headers();
        // HTTP/2 clients send the host as `:authority`, which hyper keeps in the URI.
        if self.name == header::HOST && !headers.contains_key(header::HOST) {
            let authority = req.uri().authority().map(|a| a.as_str());
            return match (&self.exact, authority) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(have)) => want == have,
            };
        }
        match &self.exact {
            None => headers.contains_key(&self.name),
            Some(want) => value_is(headers, &self.name, want),
        }
    }
}

/// Whether header `name` equals `want`. Several lines of the header are compared as one value
/// joined with `,`, as Envoy does.
fn value_is(headers: &HeaderMap, name: &HeaderName, want: &str) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let mut rest = want.as_bytes();
    let Some(tail) = rest.strip_prefix(first.as_bytes()) else {
        return false;
    };
    rest = tail;
    for v in values {
        let Some(tail) = rest.strip_prefix(b",").and_then(|r| r.strip_prefix(v.as_bytes())) else {
            return false;
        };
        rest = tail;
    }
    rest.is_empty()
}

/// `runtime_fraction`: take a request only if a draw in `0..100` falls below the percentage.
#[derive(Clone, Debug)]
pub(super) struct Fraction {
    pub(super) key: String,
    pub(super) default: u8,
}

impl Fraction {
    fn draw(&self, runtime: &Runtime) -> bool {
        let percent = runtime.get(&self.key).unwrap_or(self.default).min(100);
        runtime::below(100) < u64::from(percent)
    }
}

/// All conditions of a route.
#[derive(Clone, Debug)]
pub(super) struct Matcher {
    pub(super) path: PathMatch,
    pub(super) headers: Vec<HeaderMatch>,
    pub(super) fraction: Option<Fraction>,
}

impl Matcher {
    pub(super) fn new(path: PathMatch) -> Self {
        Self {
            path,
            headers: Vec::new(),
            fraction: None,
        }
    }

    /// Whether the route takes `req`; on a yes, how many bytes of the path matched. The
    /// runtime draw comes last so that only otherwise matching requests use it up.
    pub(super) fn matches<B>(&self, req: &Request<B>, runtime: &Runtime) -> Option<usize> {
        // A plain CONNECT names an authority, not a path: only a CONNECT condition takes it,
        // and that condition takes nothing else.
        let len = match (&self.path, crate::connect::is_plain_connect(req)) {
            (PathMatch::Connect, true) => 0,
            (PathMatch::Connect, false) | (_, true) => return None,
            (path, false) => path.matched_len(req.uri().path())?,
        };
        if !self.headers.iter().all(|h| h.matches(req)) {
            return None;
        }
        match &self.fraction {
            Some(f) if !f.draw(runtime) => None,
            _ => Some(len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn m(path: PathMatch) -> Matcher {
        Matcher::new(path)
    }

    #[test]
    fn path_conditions_ignore_the_query() {
        let rt = Runtime::new();
        let prefix = m(PathMatch::Prefix("/ws".into()));
        assert_eq!(prefix.matches(&req("/ws/chat?x=/y", &[]), &rt), Some(3));
        assert_eq!(
            prefix.matches(&req("/wsx", &[]), &rt),
            Some(3),
            "prefixes are textual"
        );
        assert_eq!(prefix.matches(&req("/w?s", &[]), &rt), None);
        assert_eq!(prefix.matches(&req("/WS", &[]), &rt), None, "case-sensitive");

        let exact = m(PathMatch::Exact("/chat".into()));
        assert_eq!(exact.matches(&req("/chat?room=1", &[]), &rt), Some(5));
        assert_eq!(exact.matches(&req("/chat/", &[]), &rt), None);

        let re = m(PathMatch::Regex(Regex::new("^/room/[0-9]+$").expect("regex")));
        assert_eq!(re.matches(&req("/room/42?x=1", &[]), &rt), Some(8));
        assert_eq!(re.matches(&req("/room/4x", &[]), &rt), None);
        let unanchored = m(PathMatch::Regex(Regex::new("[0-9]+").expect("regex")));
        assert!(unanchored.matches(&req("/a/1/b", &[]), &rt).is_some(), "a search");
    }

    #[test]
    fn header_conditions_all_hold() {
        let rt = Runtime::new();
        let mut matcher = m(PathMatch::Prefix("/".into()));
        matcher.headers = vec![
            HeaderMatch {
                name: HeaderName::from_static("x-tenant"),
                exact: Some("blue".into()),
            },
            HeaderMatch {
                name: HeaderName::from_static("x-canary"),
                exact: None,
            },
        ];
        let both = req("/", &[("x-tenant", "blue"), ("x-canary", "")]);
        assert!(matcher.matches(&both, &rt).is_some());
        assert!(matcher.matches(&req("/", &[("x-tenant", "blue")]), &rt).is_none());
        let wrong = req("/", &[("x-tenant", "Blue"), ("x-canary", "1")]);
        assert!(matcher.matches(&wrong, &rt).is_none(), "values compare exactly");
        let longer = req("/", &[("x-tenant", "blue2"), ("x-canary", "1")]);
        assert!(matcher.matches(&longer, &rt).is_none(), "the whole value");
    }

    #[test]
    fn repeated_headers_compare_as_one_joined_value() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("x-a");
        h.append(&name, "1".parse().expect("value"));
        h.append(&name, "2".parse().expect("value"));
        assert!(value_is(&h, &name, "1,2"));
        assert!(!value_is(&h, &name, "1"));
        assert!(!value_is(&h, &name, "1,2,"));
        assert!(!value_is(&h, &name, "12"));
        assert!(!value_is(&HeaderMap::new(), &name, ""));
    }

    #[test]
    fn host_falls_back_to_the_authority_of_http2_requests() {
        let rt = Runtime::new();
        let mut matcher = m(PathMatch::Prefix("/".into()));
        matcher.headers = vec![HeaderMatch {
            name: header::HOST,
            exact: Some("example.com".into()),
        }];
        let h2 = Request::get("http://example.com/x")
            .version(http::Version::HTTP_2)
            .body(())
            .expect("request");
        assert!(matcher.matches(&h2, &rt).is_some());
        assert!(
            matcher
                .matches(&req("/x", &[("host", "example.com")]), &rt)
                .is_some()
        );
        assert!(matcher.matches(&req("/x", &[("host", "other")]), &rt).is_none());
        assert!(matcher.matches(&req("/x", &[]), &rt).is_none());
    }

    #[test]
    fn runtime_fraction_reads_the_runtime_on_every_request() {
        let rt = Runtime::new();
        let mut matcher = m(PathMatch::Prefix("/".into()));
        matcher.fraction = Some(Fraction {
            key: "shift".into(),
            default: 0,
        });
        let r = req("/", &[]);
        assert!((0..200).all(|_| matcher.matches(&r, &rt).is_none()), "default 0%");
        rt.set("shift", 100);
        assert!((0..200).all(|_| matcher.matches(&r, &rt).is_some()), "100%");
        rt.set("shift", 250);
        assert!(
            (0..200).all(|_| matcher.matches(&r, &rt).is_some()),
            "above 100 is 100"
        );
        rt.set("shift", 50);
        let hits = (0..10_000).filter(|_| matcher.matches(&r, &rt).is_some()).count();
        // Mean 5 000, sigma 50: ±500 is 10 sigma.
        assert!((4_500..=5_500).contains(&hits), "{hits}");
    }
}
