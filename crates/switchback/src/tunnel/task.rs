//! A tunnel's task, from the client's upgrade to the end of the relay, and the handle that
//! reports its end.
//!
//! Written out by hand rather than as an `async fn`: an async fn keeps its arguments for its
//! whole life and every nested one adds its own, which made an idle tunnel's task 1.9 KiB.
//! This one holds the relay, the drain guard and what the tunnel reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::WriteHalf;
use tokio::sync::SetOnce;
use tokio::time::Sleep;

use super::engine::{Duplex, Settings};
use super::leg::{self, BodyLeg, Prefixed};
use super::opened::Opened;
use super::{Ends, UpstreamWriter};
use super::{Opening, TunnelObserver, TunnelStats};
use crate::drain::TunnelGuard;
use crate::handoff::UpstreamIo;
use crate::tunnel_info::TunnelInfo;

/// A handle on one tunnel, in the `101`'s response extensions: an access log or a test ties
/// the tunnel to its request with it (under HTTP/2 one connection carries many tunnels, so
/// the client's address can't).
///
/// ```
/// # async fn log(res: http::Response<switchback::Body>) {
/// use switchback::TunnelHandle;
///
/// if let Some(handle) = res.extensions().get::<TunnelHandle>().cloned() {
///     tokio::spawn(async move {
///         if let Some(stats) = handle.closed().await {
///             println!("tunnel {} ended: {}", handle.id(), stats.end);
///         }
///     });
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TunnelHandle {
    id: u64,
    ended: Arc<SetOnce<Option<TunnelStats>>>,
}

impl TunnelHandle {
    /// The tunnel's id, as in [`TunnelInfo::id`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves when the tunnel has ended, with what it relayed; `None` when it never opened
    /// (the client's connection did not upgrade).
    pub async fn closed(&self) -> Option<TunnelStats> {
        *self.ended.wait().await
    }
}

/// The task's side of the handle: says how the tunnel ended, or that it never opened when
/// dropped unset.
struct Outcome(Option<Arc<SetOnce<Option<TunnelStats>>>>);

impl Outcome {
    /// By now the `101` is written and its extensions dropped: when nobody kept the handle,
    /// an idle tunnel keeps nothing for it.
    fn keep_if_watched(&mut self) {
        self.0.take_if(|ended| Arc::strong_count(ended) == 1);
    }

    fn set(&mut self, stats: TunnelStats) {
        if let Some(ended) = self.0.take() {
            let _ = ended.set(Some(stats));
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(ended) = self.0.take() {
            let _ = ended.set(None);
        }
    }
}

/// A new tunnel id.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

type Pumped = Duplex<BodyLeg<WriteHalf<TokioIo<Upgraded>>>, BodyLeg<UpstreamWriter>>;

pin_project! {
    /// A tunnel's relay, whatever its two ends turned out to be: bare sockets (then splice
    /// applies), hyper's wrappers (e.g. under another server), or bodies (pumped).
    #[project = RelayProj]
    enum Relay {
        Sockets { #[pin] duplex: Duplex<Prefixed, Prefixed> },
        UpstreamWrapped { #[pin] duplex: Duplex<Prefixed, UpstreamIo> },
        Wrapped { #[pin] duplex: Duplex<TokioIo<Upgraded>, UpstreamIo> },
        // Boxed: a pumped tunnel is rare next to joined ones, and shouldn't size their task.
        Pumped { duplex: Pin<Box<Pumped>> },
    }
}

impl Relay {
    /// `None` if the upstream had not switched (the caller waits for that first).
    fn new(client: Upgraded, ends: Ends, settings: Settings) -> Option<Self> {
        let upstream = match ends {
            Ends::Joined { upstream } => upstream.switched()?,
            Ends::Pumped(ends) => {
                let (read, write) = tokio::io::split(TokioIo::new(client));
                // The request body may be gone (a layer dropped it): then nothing reads the
                // client, which the engine sees as the client's half-close.
                let _ = ends.client_reader.send(read);
                let client = BodyLeg::new(ends.client_body, write);
                let upstream = BodyLeg::new(ends.upstream_body, ends.upstream);
                return Some(Self::Pumped {
                    duplex: Box::pin(Duplex::new(client, upstream, settings)),
                });
            }
        };
        Some(match leg::unwrap_socket(client) {
            Ok(client) => match leg::unwrap_upstream(upstream) {
                Ok(upstream) => Self::Sockets {
                    duplex: Duplex::new(client, upstream, settings),
                },
                Err(upstream) => Self::UpstreamWrapped {
                    duplex: Duplex::new(client, upstream, settings),
                },
            },
            Err(client) => Self::Wrapped {
                duplex: Duplex::new(TokioIo::new(client), upstream, settings),
            },
        })
    }

    /// Bytes relayed so far: from the client, to the client.
    fn bytes(&self) -> (u64, u64) {
        match self {
            Self::Sockets { duplex } => duplex.bytes(),
            Self::UpstreamWrapped { duplex } => duplex.bytes(),
            Self::Wrapped { duplex } => duplex.bytes(),
            Self::Pumped { duplex } => duplex.bytes(),
        }
    }

    fn start_drain(self: Pin<&mut Self>) {
        match self.project() {
            RelayProj::Sockets { duplex } => duplex.start_drain(),
            RelayProj::UpstreamWrapped { duplex } => duplex.start_drain(),
            RelayProj::Wrapped { duplex } => duplex.start_drain(),
            RelayProj::Pumped { duplex } => duplex.as_mut().start_drain(),
        }
    }
}

impl Future for Relay {
    type Output = TunnelStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        match self.project() {
            RelayProj::Sockets { duplex } => duplex.poll(cx),
            RelayProj::UpstreamWrapped { duplex } => duplex.poll(cx),
            RelayProj::Wrapped { duplex } => duplex.poll(cx),
            RelayProj::Pumped { duplex } => duplex.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// Waits for the client's connection to upgrade, then relays until the tunnel ends.
    pub(super) struct TunnelTask {
        #[pin]
        stage: Stage,
        // Counts the tunnel as live until the task ends, and says when a drain closes it.
        #[pin]
        guard: TunnelGuard,
        report: Report,
        // Places under the caps, given back when the task (and its sockets) go.
        holds: crate::cap::Holds,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage {
        Upgrading {
            client: OnUpgrade,
            ends: Option<(Ends, Settings)>,
            // The client's connection, once upgraded, while the upstream's switch goes on.
            upgraded: Option<Upgraded>,
            // Set while an upgrade request's body is still on its way (rare: boxed).
            deadline: Option<Pin<Box<Sleep>>>,
        },
        Relaying { #[pin] relay: Relay },
        Ended,
    }
}

/// Reporting starts when bytes may flow (the client upgraded) and ends with the stats.
enum Report {
    Waiting {
        info: TunnelInfo,
        observer: Option<TunnelObserver>,
        outcome: Outcome,
    },
    Open(Opened, Outcome),
    Done,
}

impl TunnelTask {
    pub(super) fn new(client: OnUpgrade, ends: Ends, opening: Opening) -> (Self, TunnelHandle) {
        let id = opening.info.id;
        let ended = Arc::new(SetOnce::new());
        let outcome = Outcome(Some(ended.clone()));
        let task = Self {
            stage: Stage::Upgrading {
                client,
                ends: Some((ends, opening.settings)),
                upgraded: None,
                deadline: None,
            },
            guard: opening.guard,
            holds: opening.holds,
            report: Report::Waiting {
                info: opening.info,
                observer: opening.observer,
                outcome,
            },
        };
        (task, TunnelHandle { id, ended })
    }
}

impl Future for TunnelTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let StageProj::Upgrading {
            client,
            ends,
            upgraded,
            deadline,
        } = this.stage.as_mut().project()
        {
            let Some((switching, settings)) = ends else {
                this.stage.set(Stage::Ended);
                return Poll::Ready(());
            };
            match upgrading(client, upgraded, switching, settings, deadline, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(why)) => {
                    tracing::debug!(%why, "the tunnel did not open");
                    this.stage.set(Stage::Ended);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            let (Some(client), Some((ends, settings))) = (upgraded.take(), ends.take()) else {
                this.stage.set(Stage::Ended);
                return Poll::Ready(());
            };
            let Some(relay) = Relay::new(client, ends, settings) else {
                this.stage.set(Stage::Ended);
                return Poll::Ready(());
            };
            this.stage.set(Stage::Relaying { relay });
            this.report.open();
        }
        let StageProj::Relaying { mut relay } = this.stage.as_mut().project() else {
            return Poll::Ready(());
        };
        if this.guard.as_mut().poll_closing(cx).is_ready() {
            if let Report::Open(opened, _) = &*this.report
                && let Some(span) = opened.span()
            {
                tracing::debug!(target: crate::trace::TARGET, parent: &span, "drain: closing the tunnel");
            }
            relay.as_mut().start_drain();
        }
        let polled = relay.as_mut().poll(cx);
        let (from_client, to_client) = relay.bytes();
        this.guard.relayed(from_client, to_client);
        let stats = ready!(polled);
        this.stage.set(Stage::Ended);
        this.report.finish(stats);
        Poll::Ready(())
    }
}

/// How long an upgrade request's body may take to arrive in full after the `101`, when the
/// tunnel has no idle timeout to bound it (Envoy's default stream idle timeout).
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits for both connections to switch: the client's once the server has written the
/// `101` and read the request body; the upstream's once its connection has sent that body.
/// An upgrade body that never ends is bounded by the tunnel's idle timeout.
fn upgrading(
    client: &mut OnUpgrade,
    upgraded: &mut Option<Upgraded>,
    ends: &mut Ends,
    settings: &Settings,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), String>> {
    let upstream = ends.poll_switched(cx);
    if upgraded.is_none() {
        match Pin::new(client).poll(cx) {
            Poll::Ready(Ok(client)) => *upgraded = Some(client),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("the client did not upgrade: {e}"))),
            Poll::Pending => {}
        }
    }
    match upstream {
        Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("the upstream did not switch: {e}"))),
        Poll::Ready(Ok(())) if upgraded.is_some() => return Poll::Ready(Ok(())),
        // Waiting for the server to write the `101`: no timer needed.
        Poll::Ready(Ok(())) => return Poll::Pending,
        // An upgrade whose request body is still on its way: bounded.
        Poll::Pending => {}
    }
    let limit = settings.idle_timeout.unwrap_or(BODY_DEADLINE);
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    ready!(sleep.as_mut().poll(cx));
    Poll::Ready(Err(format!(
        "the upgrade request's body did not arrive within {limit:?}"
    )))
}

impl Report {
    fn open(&mut self) {
        if let Self::Waiting {
            info,
            observer,
            mut outcome,
        } = std::mem::replace(self, Self::Done)
        {
            outcome.keep_if_watched();
            *self = Self::Open(Opened::new(info, observer), outcome);
        }
    }

    fn finish(&mut self, stats: TunnelStats) {
        if let Self::Open(opened, mut outcome) = std::mem::replace(self, Self::Done) {
            opened.finish(stats);
            outcome.set(stats);
        }
    }
}
