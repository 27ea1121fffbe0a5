//! The limits every call meets before its service sees it, as one tower
//! layer in front of all services:
//!
//! - the call is counted open on its connection until its response has been
//!   sent, so a connection is idle only when no call is open on it;
//! - its request body is read message by message, following the gRPC
//!   framing (a flag byte and a 4-byte big-endian length before each
//!   message):
//!   - a message longer than `max_message_bytes` is refused as
//!     `RESOURCE_EXHAUSTED` from its length alone, before any of it is
//!     buffered;
//!   - a message's bytes are let through only once its length is reserved
//!     in the server's upload budget (`budget.rs`); the call's service
//!     gives them back once it is done with the message;
//!   - a client that leaves the server waiting for its next message longer
//!     than `idle_timeout`, or that takes longer than `message_timeout` to
//!     send one message once begun, has its call ended as
//!     `DEADLINE_EXCEEDED`. Waiting for the budget is the server's doing and
//!     runs no timer.
//!
//! A frame that ends one message and begins the next is split: the next
//! message is not read (nor reserved) until the service asks for it, so a
//! call never holds one message's bytes while waiting to reserve another's
//! that it needs before it can finish with the first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::ServerConfig;
use super::budget::{CallBytes, Reservation, UploadBudget};
use super::connection::{ConnectionInfo, OpenCall};

/// Bytes before each gRPC message: a compression flag and a length.
const MESSAGE_PREFIX_BYTES: usize = 5;

/// The limits, shared by every call of a server.
#[derive(Debug)]
struct Limits {
    budget: UploadBudget,
    max_message_bytes: usize,
    idle_timeout: Duration,
    message_timeout: Duration,
}

/// Applies the request limits of a [`ServerConfig`] to every call.
#[derive(Clone, Debug)]
pub(crate) struct RequestLimitsLayer {
    limits: Arc<Limits>,
}

impl RequestLimitsLayer {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        RequestLimitsLayer {
            limits: Arc::new(Limits {
                budget: UploadBudget::new(config.upload_budget_bytes),
                max_message_bytes: config.max_message_bytes,
                idle_timeout: config.idle_timeout,
                message_timeout: config.message_timeout,
            }),
        }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> RequestLimits<S> {
        RequestLimits {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The services behind [`RequestLimitsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct RequestLimits<S> {
    inner: S,
    limits: Arc<Limits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for RequestLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // In-process connections carry no `ConnectionInfo`: nothing to track.
        let open = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| c.activity.begin_call());
        let bytes = Arc::new(CallBytes::default());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(bytes.clone());
        let body = Body::new(LimitedBody::new(body, bytes.clone(), self.limits.clone()));
        let response = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = response.await;
            // The service has answered: whatever it did not give back, it
            // no longer needs (a streamed response reads no request bytes).
            bytes.release_all();
            response.map(|r| match open {
                Some(open) => r.map(|body| Body::new(OpenCallBody { body, _open: open })),
                None => r,
            })
        })
    }
}

/// A response body that keeps its call counted open until it is done.
struct OpenCallBody {
    body: Body,
    _open: OpenCall,
}

impl HttpBody for OpenCallBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the client is being waited for, and since when.
struct Wait {
    deadline: Pin<Box<tokio::time::Sleep>>,
    kind: WaitKind,
}

impl Wait {
    fn new(limit: Duration, kind: WaitKind) -> Self {
        Wait {
            deadline: Box::pin(tokio::time::sleep(limit)),
            kind,
        }
    }
}

#[derive(Clone, Copy)]
enum WaitKind {
    /// The beginning of the next message (or the end of the request).
    NextMessage,
    /// The rest of a message of this many bytes.
    RestOfMessage(usize),
}

/// A request body read message by message under the limits.
struct LimitedBody {
    inner: Body,
    bytes: Arc<CallBytes>,
    limits: Arc<Limits>,
    /// Index in the call of the message being read (or of the next one).
    message: u64,
    /// The current message's prefix, as far as it has come.
    prefix: [u8; MESSAGE_PREFIX_BYTES],
    prefix_len: usize,
    /// Payload bytes of the current message not yet passed on.
    payload_left: usize,
    /// The current message's reservation in the budget, while it waits.
    reserving: Option<Reservation>,
    /// Bytes received past the end of a message, held until asked for.
    held: Option<Bytes>,
    wait: Option<Wait>,
    /// A limit ended the request; nothing more is read.
    ended: bool,
}

impl LimitedBody {
    fn new(inner: Body, bytes: Arc<CallBytes>, limits: Arc<Limits>) -> Self {
        LimitedBody {
            inner,
            bytes,
            limits,
            message: 0,
            prefix: [0; MESSAGE_PREFIX_BYTES],
            prefix_len: 0,
            payload_left: 0,
            reserving: None,
            held: None,
            wait: None,
            ended: false,
        }
    }

    /// Waits for the client, ending the request once it has been waited for
    /// longer than the limit for what is awaited.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let limits = &self.limits;
        let payload_left = self.payload_left;
        let wait = self.wait.get_or_insert_with(|| {
            if payload_left > 0 {
                Wait::new(
                    limits.message_timeout,
                    WaitKind::RestOfMessage(payload_left),
                )
            } else {
                Wait::new(limits.idle_timeout, WaitKind::NextMessage)
            }
        });
        ready!(wait.deadline.as_mut().poll(cx));
        let status = match wait.kind {
            WaitKind::NextMessage => Status::deadline_exceeded(format!(
                "the client sent nothing for {} while the server waited for its next \
                 request message (the server's idle_timeout)",
                seconds(limits.idle_timeout)
            )),
            WaitKind::RestOfMessage(len) => Status::deadline_exceeded(format!(
                "a {len}-byte request message did not arrive whole within {} of its \
                 start (the server's message_timeout)",
                seconds(limits.message_timeout)
            )),
        };
        self.end(status)
    }

    /// Ends the request with `status`, giving back what it holds.
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        self.reserving = None;
        self.held = None;
        self.bytes.release_all();
        Poll::Ready(Some(Err(status)))
    }

    /// The current message has been passed on whole.
    fn finish_message(&mut self) {
        self.message += 1;
        self.wait = None;
    }

    /// Passes on bytes of the current message's payload.
    fn pass_payload(&mut self, mut data: Bytes) -> Frame<Bytes> {
        let rest = data.split_off(data.len().min(self.payload_left));
        self.payload_left -= data.len();
        if !rest.is_empty() {
            self.held = Some(rest);
        }
        if self.payload_left == 0 {
            self.finish_message();
        }
        Frame::data(data)
    }

    /// Takes in bytes of a message's prefix; once it is whole, refuses an
    /// oversized message or starts reserving its bytes.
    fn take_prefix(&mut self, mut data: Bytes) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if matches!(
            self.wait.as_ref().map(|w| w.kind),
            Some(WaitKind::NextMessage)
        ) {
            // The client is sending again: the idle clock starts afresh.
            self.wait = None;
        }
        let n = data.len().min(MESSAGE_PREFIX_BYTES - self.prefix_len);
        let rest = data.split_off(n);
        self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data);
        self.prefix_len += n;
        if !rest.is_empty() {
            self.held = Some(rest);
        }
        if self.prefix_len == MESSAGE_PREFIX_BYTES {
            self.prefix_len = 0;
            let [_, l0, l1, l2, l3] = self.prefix;
            let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
            if len > self.limits.max_message_bytes {
                return self.end(Status::resource_exhausted(format!(
                    "a request message of {len} bytes is over the server's limit of {} bytes \
                     (max_message_bytes)",
                    self.limits.max_message_bytes
                )));
            }
            if len == 0 {
                self.finish_message();
            } else {
                self.payload_left = len;
                self.reserving = Some(self.limits.budget.reserve(len));
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(reserving) = this.reserving.as_mut() {
            // Waiting on the server, not the client: no timer runs.
            let reserved = ready!(reserving.as_mut().poll(cx));
            this.reserving = None;
            match reserved {
                Ok(bytes) => this.bytes.hold(this.message, bytes),
                // The budget's semaphore is never closed.
                Err(_) => return this.end(Status::unavailable("the server is shutting down")),
            }
            // The rest of the message must now come within message_timeout.
            this.wait = Some(Wait::new(
                this.limits.message_timeout,
                WaitKind::RestOfMessage(this.payload_left),
            ));
        }
        let data = match this.held.take() {
            Some(data) => data,
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return this.poll_wait(cx),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: not part of any message.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            },
        };
        if data.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.payload_left > 0 {
            Poll::Ready(Some(Ok(this.pass_payload(data))))
        } else {
            this.take_prefix(data)
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || (self.held.is_none() && self.reserving.is_none() && self.inner.is_end_stream())
    }
}

/// A duration as a client reads it: `60s`, `1500ms`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
