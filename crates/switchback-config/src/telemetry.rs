//! `tracing`: where the proxy's spans go.
//!
//! ```yaml
//! tracing:
//!   otlp_endpoint: http://collector:4318   # OTLP over HTTP/protobuf; spans to <endpoint>/v1/traces
//!   service_name: switchback               # default: switchback
//!   sampling: 10                           # percent of new traces (0-100, default 100); a parent's flag wins
//! ```
//!
//! Without the block nothing is exported; the trace context is still propagated.

use serde::Serialize;

use crate::error::Ctx;
use crate::locate::join_key;
use crate::read::{S, Whole};
use crate::tree::Node;

/// `sampling`: a whole percent.
const PERCENT: Whole = Whole { min: 0, max: 100 };

/// The `tracing` block: spans exported over OTLP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tracing {
    /// The collector's base URL (`http://HOST:PORT`, optionally a path); spans are posted to
    /// `<otlp_endpoint>/v1/traces` as OTLP/HTTP protobuf.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute of every span. Default `switchback`.
    pub service_name: String,
    /// Percent of new traces (a request without a valid `traceparent`) that are sampled;
    /// a client's sampled flag wins. Default 100.
    pub sampling: u8,
}

#[derive(Debug)]
pub(crate) struct RawTracing {
    otlp_endpoint: Option<S<String>>,
    service_name: Option<S<String>>,
    sampling: Option<S<u64>>,
}

impl RawTracing {
    pub(crate) const FIELDS: &'static [&'static str] = &["otlp_endpoint", "service_name", "sampling"];

    pub(crate) fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawTracing {
                otlp_endpoint: f.required(ctx, "otlp_endpoint", Ctx::string),
                service_name: f.optional(ctx, "service_name", Ctx::string).ok(),
                sampling: f
                    .optional(ctx, "sampling", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                        ctx.whole(node, path, PERCENT)
                    })
                    .ok(),
            }),
        )
    }
}

impl Ctx<'_> {
    /// Checks the `tracing` block and builds it.
    pub(crate) fn tracing(&mut self, raw: &S<RawTracing>) -> Option<Tracing> {
        let service_name = match &raw.value.service_name {
            Some(name) if name.value.trim().is_empty() => {
                let path = join_key("tracing", "service_name");
                self.error(
                    name.at,
                    &path,
                    "service_name is empty; name the service, or leave it out for `switchback`",
                );
                return None;
            }
            Some(name) => name.value.trim().to_owned(),
            None => "switchback".to_owned(),
        };
        let sampling = match &raw.value.sampling {
            None => 100,
            Some(s) => match u8::try_from(s.value) {
                Ok(percent) if u64::from(percent) <= PERCENT.max => percent,
                _ => {
                    let path = join_key("tracing", "sampling");
                    self.error(
                        s.at,
                        &path,
                        format!("sampling is {}; it must be a whole number from 0 to 100 (a percent of new traces)", s.value),
                    );
                    return None;
                }
            },
        };
        let endpoint = raw.value.otlp_endpoint.as_ref()?;
        let otlp_endpoint = self.otlp_endpoint(endpoint)?;
        Some(Tracing {
            otlp_endpoint,
            service_name,
            sampling,
        })
    }

    /// An `http://` URL with a host; the trailing `/` dropped.
    fn otlp_endpoint(&mut self, raw: &S<String>) -> Option<String> {
        let path = join_key("tracing", "otlp_endpoint");
        let text = raw.value.trim().trim_end_matches('/');
        let uri = text.parse::<http::Uri>().ok();
        let problem = match &uri {
            None => Some(format!("{text:?} is not a URL")),
            Some(u) if u.scheme_str() == Some("https") => Some(
                "https collectors are not supported yet; use http:// (a collector or agent on the same host or network)"
                    .to_owned(),
            ),
            Some(u) if u.scheme_str() != Some("http") || u.host().is_none() => {
                Some(format!("{text:?} is not an http:// URL with a host"))
            }
            Some(u) if u.query().is_some() => Some("the URL may not have a query".to_owned()),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            self.error(
                raw.at,
                &path,
                format!("{problem}; write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318"),
            );
            return None;
        }
        Some(text.to_owned())
    }
}
