//! The tower layer that meters every call: its duration and outcome per
//! RPC, and the bytes it moved each way, counted for its client as they
//! flow (so a long upload shows in the figures while it runs, not once it
//! ends).
//!
//! It is the outermost layer, so calls the request limits or the token
//! check refuse are counted too. It learns who the client is from the
//! token check: it puts a [`CallMeter`] in the request's extensions, and
//! the auth layer, which runs synchronously inside this layer's `call`,
//! names the token that authenticated (`CallMeter::authenticated_as`).
//! A call without one is its peer's address.
//!
//! A call ends when its response body is dropped — sent whole, or
//! abandoned by a client that went away — or when its response future is
//! dropped before it answered; its outcome is the `grpc-status` of the
//! response headers or trailers (none seen counts as failed).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::{ClientKey, Metrics};
use crate::service::connection::ConnectionInfo;

/// Meters every call into one [`Metrics`].
#[derive(Clone, Debug)]
pub(crate) struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The services behind [`MetricsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// One call as the metrics see it: which RPC, since when, and who.
#[derive(Debug)]
pub(crate) struct CallMeter {
    metrics: Arc<Metrics>,
    rpc: usize,
    started: Instant,
    peer: Option<IpAddr>,
    /// The name of the token the call authenticated with, if any.
    token: OnceLock<Arc<str>>,
    /// Who the call is counted for, fixed at its first use.
    client: OnceLock<ClientKey>,
}

impl CallMeter {
    /// Records that the call authenticated with the token named `name`.
    /// Only the token check calls this, before the call's bytes flow.
    pub(crate) fn authenticated_as(&self, name: &str) {
        let _ = self.token.set(Arc::from(name));
    }

    fn client(&self) -> &ClientKey {
        self.client
            .get_or_init(|| match (self.token.get(), self.peer) {
                (Some(name), _) => ClientKey::Token(name.clone()),
                (None, Some(ip)) => ClientKey::Address(ip),
                (None, None) => ClientKey::InProcess,
            })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Metered<S>
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
        let meter = Arc::new(CallMeter {
            metrics: self.metrics.clone(),
            rpc: self.metrics.rpc_index(request.uri().path()),
            started: Instant::now(),
            // IPv4 clients of a dual-stack listener are one client whether
            // they come as 192.0.2.1 or ::ffff:192.0.2.1.
            peer: request
                .extensions()
                .get::<ConnectionInfo>()
                .map(|c| c.peer.ip().to_canonical()),
            token: OnceLock::new(),
            client: OnceLock::new(),
        });
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(meter.clone());
        let body = Body::new(CountedRequest {
            body,
            meter: meter.clone(),
        });
        let response = self.inner.call(http::Request::from_parts(parts, body));
        // The token check has run (synchronously, in `call`): who the
        // client is can be fixed now.
        meter.client();
        let mut end = CallEnd { meter, ok: None };
        Box::pin(async move {
            let response = response.await?;
            end.ok = grpc_ok(response.headers());
            Ok(response.map(|body| Body::new(CountedResponse { body, end })))
        })
    }
}

/// `Some(true)` for `grpc-status: 0`, `Some(false)` for any other status,
/// `None` when the headers carry none.
fn grpc_ok(headers: &http::HeaderMap) -> Option<bool> {
    headers
        .get("grpc-status")
        .map(|status| status.as_bytes() == b"0")
}

/// Ends the call's figures when dropped.
struct CallEnd {
    meter: Arc<CallMeter>,
    ok: Option<bool>,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        let m = &self.meter;
        m.metrics.finished(
            m.rpc,
            m.client(),
            m.started.elapsed(),
            self.ok.unwrap_or(false),
        );
    }
}

/// A request body counting the bytes it passes on.
struct CountedRequest {
    body: Body,
    meter: Arc<CallMeter>,
}

impl HttpBody for CountedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && !data.is_empty()
        {
            let m = &self.meter;
            m.metrics.received(m.client(), data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body counting the bytes it sends and noting the call's
/// status from its trailers; dropping it ends the call.
struct CountedResponse {
    body: Body,
    end: CallEnd,
}

impl HttpBody for CountedResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if !data.is_empty() {
                    let m = &self.end.meter;
                    m.metrics.sent(m.client(), data.len() as u64);
                }
            } else if let Some(trailers) = frame.trailers_ref()
                && let Some(ok) = grpc_ok(trailers)
            {
                self.end.ok = Some(ok);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
