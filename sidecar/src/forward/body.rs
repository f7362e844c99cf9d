//! Bodies: request bodies kept for replay, and response bodies that hold resources until sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{Body, BoxError, ProxyError, empty, full};
use crate::forward::backend::InFlight;
use crate::forward::pool::Lease;

/// Request bodies up to this size are kept in memory so they can be retried or mirrored;
/// bigger or unknown-length bodies stream straight through and are sent once.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// A request body that may be replayed.
pub enum RequestBody {
    /// Kept in memory (small, known length): can be sent any number of times.
    Buffered(Bytes),
    /// Streams through once; `None` after it was sent.
    Streaming(Option<Incoming>),
}

impl RequestBody {
    /// Buffers the body when it is empty or declared no bigger than `MAX_REPLAY_BODY`. Bodies of
    /// unknown length are not awaited: a bidirectional stream (gRPC) would deadlock if the proxy
    /// waited for the client to finish before forwarding anything.
    pub async fn buffer(body: Incoming) -> Result<Self, ProxyError> {
        let small = body.is_end_stream()
            || body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= MAX_REPLAY_BODY as u64);
        if !small {
            return Ok(Self::Streaming(Some(body)));
        }
        let bytes = Limited::new(body, MAX_REPLAY_BODY)
            .collect()
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading request body: {e}")))?
            .to_bytes();
        Ok(Self::Buffered(bytes))
    }

    /// The bytes, if the body was kept for replay.
    pub fn replayable(&self) -> Option<&Bytes> {
        match self {
            Self::Buffered(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }

    /// The body for the next attempt; `None` once a streamed body was sent. A streamed body
    /// fails once it passes `limit` bytes (the attempt then ends in [`ProxyError::BodyTooLarge`];
    /// a buffered one was held to the limit by its declared length).
    pub fn take(&mut self, limit: Option<u64>) -> Option<Body> {
        match self {
            Self::Buffered(b) if b.is_empty() => Some(empty()),
            Self::Buffered(b) => Some(full(b.clone())),
            Self::Streaming(b) => b.take().map(|b| match limit {
                Some(n) => Limited::new(b, usize::try_from(n).unwrap_or(usize::MAX)).boxed_unsync(),
                None => b.map_err(BoxError::from).boxed_unsync(),
            }),
        }
    }
}

/// What a response body holds until it is dropped: the backend's limiter slot, the endpoint's
/// in-flight count, and the pooled HTTP/1.1 connection it is read from.
pub type Guards = (Option<OwnedSemaphorePermit>, InFlight, Option<Lease>);

pin_project_lite::pin_project! {
    /// An upstream response body that holds the request's limiter slot and in-flight count
    /// until it has been fully sent to the client (the guards are released on drop).
    pub struct Guarded {
        #[pin]
        inner: Incoming,
        guards: Guards,
    }
}

impl Guarded {
    /// Wraps `inner`, holding `guards` until it is dropped.
    pub fn new(inner: Incoming, guards: Guards) -> Self {
        Self { inner, guards }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
