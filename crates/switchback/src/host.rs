//! `Host` and the request target (RFC 9112 §3.2): one valid `Host` on every HTTP/1.1 request,
//! and an absolute-form target's authority in place of whatever `Host` said.
//!
//! Refusing the ambiguous cases is what keeps a proxy and the upstream behind it from routing
//! one request by two different hosts.

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Version};

/// Checks `req`'s `Host`, and for an absolute-form target (`GET http://a.example/ HTTP/1.1`)
/// replaces `Host` with the target's authority (RFC 9112 §3.2.2). The error says why the
/// request is refused with 400.
pub(crate) fn normalise<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    one_authority(req)?;
    let has_host = req.headers().contains_key(header::HOST);
    match req.version() {
        Version::HTTP_11 if !has_host => Err("an HTTP/1.1 request needs a Host header"),
        Version::HTTP_2 | Version::HTTP_3 if !has_host && req.uri().authority().is_none() => {
            Err("an HTTP/2 request needs :authority or a Host header")
        }
        _ => Ok(()),
    }
}

/// Leaves `req` with one authority, the one everything below routes and forwards by: an
/// absolute-form target's replaces `Host`, and an HTTP/2 `Host` must agree with
/// `:authority`. Whatever is present must be valid; a missing `Host` is [`normalise`]'s
/// concern. Route matching runs this first, so that no route is picked by a `Host` the
/// upstream will not get.
pub(crate) fn one_authority<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let version = req.version();
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if version != Version::HTTP_10 && version != Version::HTTP_11 {
        return from_authority(req.uri().authority(), first.as_ref());
    }
    if let Some(target) = req.uri().authority() {
        if target.as_str().contains('@') {
            return Err("the request target carries userinfo");
        }
        let host = HeaderValue::from_str(target.as_str())
            .ok()
            .filter(valid)
            .ok_or("the request target's authority is not a valid host[:port]")?;
        req.headers_mut().insert(header::HOST, host);
        return Ok(());
    }
    match first {
        Some(host) if !valid(&host) => Err("the Host header is not a valid host[:port]"),
        _ => Ok(()),
    }
}

/// HTTP/2 (RFC 9113 §8.3.1): hyper checks `:authority`, but `host` lines are ordinary
/// headers there, and the HTTP/1.1 request sent upstream keeps one. It must be a valid
/// `host[:port]` naming the same host as `:authority`.
fn from_authority(authority: Option<&Authority>, host: Option<&HeaderValue>) -> Result<(), &'static str> {
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        return Err("the request target carries userinfo");
    }
    // It becomes the upstream's `Host` when there is none.
    if authority.is_some_and(|a| HeaderValue::from_str(a.as_str()).ok().filter(valid).is_none()) {
        return Err("the request target's authority is not a valid host[:port]");
    }
    match (authority, host) {
        (_, Some(host)) if !valid(host) => Err("the Host header is not a valid host[:port]"),
        (Some(a), Some(host)) if !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
            Err("the Host header differs from :authority")
        }
        _ => Ok(()),
    }
}

/// `host[:port]`: no userinfo, no path, no list, no whitespace, a port of digits only.
fn valid(host: &HeaderValue) -> bool {
    let Ok(text) = host.to_str() else {
        return false;
    };
    if text.is_empty()
        || text.contains(['@', ',', '/', '?', '#', ' ', '\t'])
        || text.parse::<Authority>().is_err()
    {
        return false;
    }
    // `Authority` takes `a:`, `a:x` and a bare IPv6 address; a Host doesn't.
    let port = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => match after {
                "" => return true,
                after => after.strip_prefix(':'),
            },
            _ => return false,
        },
        None => match text.split_once(':') {
            Some((_, port)) => Some(port),
            None => return true,
        },
    };
    port.is_some_and(|p| {
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(target).version(Version::HTTP_11);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn good_hosts_pass_untouched() {
        for host in [
            "a.example",
            "a.example:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.example",
        ] {
            let mut r = req("/", &[host]);
            assert_eq!(normalise(&mut r), Ok(()), "{host}");
            assert_eq!(r.headers()[header::HOST], host);
        }
    }

    #[test]
    fn bad_hosts_are_refused() {
        for host in [
            "",
            "user@a.example",
            "a.example/path",
            "a.example, b.example",
            "a.example,b.example",
            "a.example:",
            "a.example:http",
            "a.example:99999",
            "a example",
            "::1",
        ] {
            assert!(normalise(&mut req("/", &[host])).is_err(), "{host:?}");
        }
        assert_eq!(
            normalise(&mut req("/", &[])),
            Err("an HTTP/1.1 request needs a Host header")
        );
        assert_eq!(
            normalise(&mut req("/", &["a.example", "a.example"])),
            Err("more than one Host header")
        );
    }

    #[test]
    fn an_absolute_form_target_sets_host() {
        let mut r = req("http://target.example:81/x?y", &["other.example"]);
        assert_eq!(normalise(&mut r), Ok(()));
        assert_eq!(r.headers()[header::HOST], "target.example:81");
        let mut r = req("http://user@target.example/x", &["other.example"]);
        assert!(normalise(&mut r).is_err());
        for target in [
            ",",
            "http://a.example:99999/",
            "http://a.example:/",
            "a.example:http",
        ] {
            let mut r = req(target, &["a.example"]);
            assert!(normalise(&mut r).is_err(), "{target}");
        }
    }

    #[test]
    fn http2_host_lines_must_agree_with_the_authority() {
        let h2 = |target: &str, hosts: &[&str]| {
            let mut r = req(target, hosts);
            *r.version_mut() = Version::HTTP_2;
            r
        };
        assert_eq!(normalise(&mut h2("http://a.example/", &[])), Ok(()));
        assert_eq!(normalise(&mut h2("http://a.example/", &["A.example"])), Ok(()));
        assert_eq!(normalise(&mut h2("/", &["a.example"])), Ok(()));
        assert_eq!(
            normalise(&mut h2("http://a.example/", &["a.example", "b.example"])),
            Err("more than one Host header")
        );
        assert_eq!(
            normalise(&mut h2("http://a.example/", &["b.example"])),
            Err("the Host header differs from :authority")
        );
        assert!(normalise(&mut h2("/", &["a.example, b.example"])).is_err());
        assert!(normalise(&mut h2("http://u@a.example/", &[])).is_err());
        assert!(normalise(&mut h2("/", &[])).is_err());
    }

    #[test]
    fn http_1_0_may_go_without_host() {
        let mut r = Request::get("/").version(Version::HTTP_10).body(()).unwrap();
        assert_eq!(normalise(&mut r), Ok(()));
    }
}
