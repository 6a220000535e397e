//! Server-Sent Event streams of a run's event log. Each stream reads the
//! log from its own position at its own pace: a client that stops reading
//! stalls only its own connection (its socket buffer fills and its stream
//! is no longer polled), never the run, other readers or other tenants.

use super::StreamSlot;
use super::runs::{Read, RunEntry};
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A frame of the stream: `id`, `event` and `data` lines.
fn frame(id: usize, kind: &str, json: &str) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {json}\n\n"))
}

/// The stream of `run`'s events from position `from` on; it ends after
/// the run's last event.
pub(super) fn run_stream(run: Arc<RunEntry>, from: usize, slot: StreamSlot) -> Response {
    let frames = futures_util::stream::unfold(
        (run, from, slot, Vec::<Bytes>::new().into_iter(), None),
        |(run, mut next, slot, mut queued, mut watch)| async move {
            loop {
                if let Some(bytes) = queued.next() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(bytes),
                        (run, next, slot, queued, watch),
                    ));
                }
                // Subscribe before reading, so no change is missed.
                let receiver = watch.get_or_insert_with(|| run.subscribe());
                match run.read_from(next) {
                    Read::Events(events, upto) => {
                        let frames: Vec<Bytes> = events
                            .iter()
                            .enumerate()
                            .map(|(i, e)| frame(next + i, e.kind, &e.json))
                            .collect();
                        next = upto;
                        queued = frames.into_iter();
                    }
                    Read::Done => return None,
                    Read::Pending => {
                        match tokio::time::timeout(KEEP_ALIVE, receiver.changed()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return None,
                            Err(_) => {
                                queued = vec![Bytes::from_static(b": keep-alive\n\n")].into_iter();
                            }
                        }
                    }
                }
            }
        },
    );
    sse_response(Body::from_stream(frames))
}

/// A response carrying `body` as an event stream.
pub(super) fn sse_response(body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
