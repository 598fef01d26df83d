//! The dashboard's HTTP server (axum on flowrun's runtime): the page, its
//! state as JSON, and Server-Sent Events that push every poll to the page.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio::sync::watch;

use super::model::Model;

/// How often the page gets fresh data while someone watches.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// What the handlers share.
#[derive(Clone)]
pub(super) struct Hub {
    pub model: Arc<Model>,
    /// Bumped after every poll.
    pub polled: watch::Receiver<u64>,
    /// Asks the poller for a poll now (a page just connected).
    pub poke: crossbeam_channel::Sender<()>,
}

/// A running server; dropping it does not stop it, [`Server::stop`] does.
pub(super) struct Server {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Binds `addr`, or a free port on the same host when its port is taken.
/// Returns the listener and whether it fell back.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, bool)> {
    match TcpListener::bind(addr) {
        Ok(l) => Ok((l, false)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            let l = TcpListener::bind(SocketAddr::new(addr.ip(), 0))?;
            Ok((l, true))
        }
        Err(e) => Err(e),
    }
}

/// Serves the dashboard on `listener` from flowrun's runtime.
pub(super) fn serve(listener: TcpListener, hub: Hub) -> std::io::Result<Server> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = flowrun_core::runtime();
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let loopback_only = local.ip().is_loopback();
    let app = Router::new()
        .route("/", get(|| async { Redirect::temporary("/status") }))
        .route("/status", get(page))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/health", get(|| async { "ok" }))
        .with_state(hub)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            check_host(req, next, loopback_only)
        }));
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .await;
    });
    Ok(Server {
        shutdown: Some(shutdown),
        task: Some(task),
    })
}

impl Server {
    /// Stops accepting, lets pages get their last message, then stops.
    pub(super) fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            flowrun_core::runtime().spawn(async move {
                let _ = task.await;
                let _ = tx.send(());
            });
            // Pages end their event streams once the flow run ended; a
            // server still busy after that is dropped rather than waited for.
            if rx.recv_timeout(Duration::from_secs(3)).is_err() {
                abort.abort();
            }
        }
    }
}

/// A page on a loopback-only dashboard must be asked for by a loopback
/// name: another site that a browser resolves to 127.0.0.1 (DNS
/// rebinding) gets nothing.
async fn check_host(req: Request, next: Next, loopback_only: bool) -> Response {
    if loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "this dashboard answers to loopback addresses only",
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page(State(hub): State<Hub>) -> Response {
    let model = hub.model.clone();
    match tokio::task::spawn_blocking(move || fresh_message(&model)).await {
        Ok(m) => Html(super::page::live(&m.json)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn fresh_message(model: &Model) -> super::model::Message {
    model.poll_unless_fresh(POLL_INTERVAL);
    model.message(0)
}

async fn state(State(hub): State<Hub>) -> Response {
    let model = hub.model.clone();
    let message = tokio::task::spawn_blocking(move || fresh_message(&model)).await;
    match message {
        Ok(m) => ([(header::CONTENT_TYPE, "application/json")], m.json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Counts a connected page for as long as its stream lives.
struct Viewer(Arc<Model>);

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Watching {
    hub: Hub,
    since: u64,
    done: bool,
    _viewer: Viewer,
}

async fn events(
    State(hub): State<Hub>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Where the page is: a reconnecting page sends the id of its last
    // message, a new one the position it fetched up to (`?since=`).
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            query?
                .split('&')
                .find_map(|kv| kv.strip_prefix("since=")?.parse().ok())
        })
        .unwrap_or(0);
    hub.model.viewers.fetch_add(1, Ordering::AcqRel);
    let viewer = Viewer(hub.model.clone());
    let _ = hub.poke.try_send(());
    let mut polled = hub.polled.clone();
    polled.mark_unchanged();
    let watching = Watching {
        hub: Hub { polled, ..hub },
        since,
        done: false,
        _viewer: viewer,
    };
    let stream = futures_util::stream::unfold(watching, |mut w| async move {
        if w.done {
            return None;
        }
        if !w.hub.model.ended() && w.hub.polled.changed().await.is_err() {
            // The poller is gone: send what there is, then end.
            w.done = true;
        }
        let message = w.hub.model.message(w.since);
        w.since = message.next;
        w.done |= message.ended;
        let event = Event::default()
            .id(message.next.to_string())
            .data(message.json);
        Some((Ok(event), w))
    });
    // A page that went away is only noticed when a write to it fails, so
    // keep-alives come often: the viewer count (which decides whether the
    // cluster is polled at all) then drops within a few seconds.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "127.0.0.1:8787",
            "localhost:8787",
            "[::1]:80",
            "127.0.0.1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8787",
            "10.0.0.1:8787",
            "",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
