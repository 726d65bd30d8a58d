// wfm patch: Kafka frames decoded and encoded on the connection's own task.
//
// tansu-service 0.6's `BytesFrameService` hands every request to tokio's
// blocking pool twice, once to decode it and once to encode its response.
// Each hand-off wakes a pool thread and then the connection's task again:
// under wfm's load (tens of thousands of small requests a second) those
// wake-ups and context switches cost more CPU than the decoding itself,
// which takes microseconds. Without SASL there is nothing else that service
// does, so `FrameLayer` codes frames in place; with SASL configured it keeps
// tansu's service.

use std::sync::Arc;

use bytes::Bytes;
use rama::{Context, Layer, Service};
use rsasl::config::SASLConfig;
use tansu_sans_io::{Frame, Header};
use tansu_service::{BytesFrameLayer, BytesFrameService};

#[derive(Clone, Debug, Default)]
pub struct FrameLayer {
    sasl_config: Option<Arc<SASLConfig>>,
}

impl FrameLayer {
    pub fn with_sasl_config(sasl_config: Option<Arc<SASLConfig>>) -> Self {
        Self { sasl_config }
    }
}

impl<S> Layer<S> for FrameLayer {
    type Service = FrameService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.sasl_config {
            None => FrameService::Inline(inner),
            Some(config) => FrameService::WithSasl(
                BytesFrameLayer::default()
                    .with_sasl_config(Some(config.clone()))
                    .layer(inner),
            ),
        }
    }
}

pub enum FrameService<S> {
    Inline(S),
    WithSasl(BytesFrameService<S>),
}

impl<S> std::fmt::Debug for FrameService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Inline(_) => "FrameService::Inline",
            Self::WithSasl(_) => "FrameService::WithSasl",
        })
    }
}

impl<S, State> Service<State, Bytes> for FrameService<S>
where
    S: Service<State, Frame, Response = Frame>,
    State: Clone + Send + Sync + 'static,
    S::Error: From<tansu_sans_io::Error> + From<tokio::task::JoinError> + std::fmt::Debug,
{
    type Response = Bytes;
    type Error = S::Error;

    async fn serve(&self, ctx: Context<State>, req: Bytes) -> Result<Bytes, S::Error> {
        let inner = match self {
            Self::Inline(inner) => inner,
            Self::WithSasl(stock) => return stock.serve(ctx, req).await,
        };
        let request = Frame::request_from_bytes(req)?;
        let api_key = request.api_key()?;
        let api_version = request.api_version()?;
        let correlation_id = request.correlation_id()?;
        let Frame { body, .. } = inner.serve(ctx, request).await?;
        Frame::response(
            Header::Response { correlation_id },
            body,
            api_key,
            api_version,
        )
        .map_err(Into::into)
    }
}
