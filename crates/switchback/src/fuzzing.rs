//! **Not a stable API**: an entry point into the proxy's request-head handling for the fuzz
//! targets (`fuzz/` at the repository root) and the property tests. It may change or go away
//! in any release.

use http::Request;

use crate::cluster::Endpoint;
use crate::detect::{IgnoreUpgrades, Inspection, inspect};
use crate::forward::{h2_to_h1_upgrade, upstream};
use crate::router;

/// The endpoint the head is addressed to: only a route's host rewrite would show it, and
/// requests built here carry no route.
const ENDPOINT: &str = "upstream.invalid:80";

/// Runs a request head through what the proxy does to it on its way upstream, with the
/// defaults of an [`UpgradeRouter`](crate::UpgradeRouter) that allows every upgrade type: the
/// router's inspection (refusals, `Host`, hop-by-hop headers, `h2c`, the upgrade pair), its
/// refusal of what it does not proxy, the HTTP/2 to HTTP/1.1 translation, and the head
/// [`Forward`](crate::Forward) writes for an upgrade attempt (`Host`, origin form, HTTP/1.1,
/// the body's framing). A CONNECT keeps its method and authority-form target, as it is
/// forwarded to an upstream proxy.
///
/// A plain request takes the same head; there hyper's client writes the target and the
/// framing, to the same effect. Whether the request declares a body is read from its headers,
/// as the router does.
///
/// `Err` carries the reason the proxy answers with an error instead (`400`, `501`).
pub fn upstream_head(mut req: Request<()>) -> Result<Request<()>, String> {
    let has_body = router::declares_body(req.headers());
    match inspect(&mut req, &IgnoreUpgrades::default(), &[]) {
        Inspection::Malformed(why) => return Err(why.to_owned()),
        Inspection::NominatesProtected(name) => {
            return Err(format!("the Connection header may not nominate {name:?}"));
        }
        Inspection::Plain => {}
        Inspection::Upgrade(ty) => {
            router::proxied(&ty, req.version())?;
            if ty.is_connect() {
                // Forwarded as the CONNECT it is (proxy mode), over HTTP/1.1.
                crate::connect::check(&req).map_err(|(_, why)| why.to_owned())?;
                *req.version_mut() = http::Version::HTTP_11;
            } else if req.version() == http::Version::HTTP_2 {
                let (mut parts, ()) = req.into_parts();
                h2_to_h1_upgrade(&mut parts, &ty);
                req = Request::from_parts(parts, ());
            }
        }
    }
    let (mut parts, ()) = req.into_parts();
    upstream::upgrade_head(&mut parts, &Endpoint::new(ENDPOINT), has_body);
    Ok(Request::from_parts(parts, ()))
}
