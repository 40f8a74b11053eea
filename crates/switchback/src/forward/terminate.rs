//! A terminated CONNECT: the proxy connects to an endpoint of the route's cluster itself,
//! answers `200`, and the tunnel relays raw bytes to that connection (Envoy's
//! `connect_config`).

use std::time::Duration;

use http::{Response, StatusCode};

use super::attempt::{Answer, Answered, Attempts, Failure, Sender};
use super::upstream::{self, Tunnel};
use crate::body::Body;
use crate::cluster::{Carried, Cluster, Endpoint};
use crate::ext::UpstreamAddr;
use crate::handoff::{Handoff, Switch, UpstreamIo};
use crate::tls::UpstreamStream;

/// Connects to the cluster through the attempt loop (its balancer, retries on connect
/// failure, outlier detection) and answers `200` with the connection handed to the tunnel;
/// a failure answers as an upgrade's would, and closes the client's connection.
pub(crate) async fn connect(
    cluster: &Cluster,
    attempts: &mut Attempts,
    tunnel: Tunnel<'_>,
) -> Response<Body> {
    match attempts.run(cluster, Body::empty(), &mut Raw { cluster }).await {
        Ok(Answer {
            answer: Connected(stream),
            endpoint,
            active,
        }) => {
            let upstream = Switch::Done(UpstreamIo::Raw(stream));
            let handoff = Handoff::new(upstream, tunnel.client, tunnel.client_untouched);
            let mut res = Response::new(Body::upstream_tunnel(handoff.clone()));
            let ext = res.extensions_mut();
            ext.insert(handoff);
            ext.insert(Carried::new(active));
            ext.insert(UpstreamAddr(endpoint.address().to_owned()));
            res
        }
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            upstream::fail(tunnel.ty, failure.reason(), status, message)
        }
    }
}

/// An attempt that only connects: no HTTP is spoken to the endpoint.
struct Raw<'a> {
    cluster: &'a Cluster,
}

/// A connection made, which the client hears of as a `200`.
struct Connected(UpstreamStream);

impl Answered for Connected {
    fn status(&self) -> StatusCode {
        StatusCode::OK
    }
}

impl Sender for Raw<'_> {
    type Answer = Connected;
    const REPEATS_ENDPOINTS: bool = false;

    async fn send(
        &mut self,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
        _: &mut Option<Body>,
    ) -> Result<Connected, Failure> {
        match super::with_timeout(timeout, self.cluster.connect(endpoint)).await {
            Some(Ok(stream)) => Ok(Connected(stream)),
            Some(Err(e)) => Err(Failure::Connect(e)),
            None => Err(Failure::Timeout),
        }
    }
}
