//! A real OTLP receiver, built from the official protobuf definitions
//! (`opentelemetry-proto`): gRPC through tonic, and HTTP/protobuf through axum.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Everything received, as decoded protobuf.
#[derive(Clone, Default)]
pub struct Received {
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

/// A span with the service name of its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

/// A log record with the service name of its resource.
#[derive(Clone, Debug)]
pub struct ReceivedLog {
    pub service: String,
    pub record: LogRecord,
}

pub fn string_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    })
}

impl Received {
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for request in self.traces.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| string_value(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        out.push(ReceivedSpan { service: service.clone(), span: span.clone() });
                    }
                }
            }
        }
        out
    }

    pub fn logs(&self) -> Vec<ReceivedLog> {
        let mut out = Vec::new();
        for request in self.logs.lock().unwrap().iter() {
            for resource_logs in &request.resource_logs {
                let service = resource_logs
                    .resource
                    .as_ref()
                    .and_then(|r| string_value(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource_logs.scope_logs {
                    for record in &scope.log_records {
                        out.push(ReceivedLog { service: service.clone(), record: record.clone() });
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 10 s) until `done` holds.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.logs.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Received {
    /// The names of the metrics received, with the service name of their resource.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for request in self.metrics.lock().unwrap().iter() {
            for resource in &request.resource_metrics {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| string_value(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in &resource.scope_metrics {
                    for metric in &scope.metrics {
                        out.push((service.clone(), metric.name.clone()));
                    }
                }
            }
        }
        out
    }
}

/// A running receiver; dropping `stop` (or calling it) shuts it down.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the receiver and waits until its port is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// OTLP/gRPC on 127.0.0.1 (a free port).
pub async fn grpc() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = received.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service.clone()))
            .add_service(LogsServiceServer::new(service.clone()))
            .add_service(MetricsServiceServer::new(service))
            .serve_with_incoming_shutdown(tokio_stream_of(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Receiver { addr, received, stop: Some(stop), task }
}

/// Adapts a listener into the stream of connections tonic's server takes.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| socket);
        Some((accepted, listener))
    })
}

/// OTLP/HTTP with protobuf bodies on 127.0.0.1 (a free port): `/v1/traces`, `/v1/logs`,
/// `/v1/metrics`.
pub async fn http() -> Receiver {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::routing::post;

    async fn traces(State(received): State<Received>, body: Bytes) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(body).expect("a valid ExportTraceServiceRequest");
        received.traces.lock().unwrap().push(request);
        ExportTraceServiceResponse { partial_success: None }.encode_to_vec()
    }
    async fn metrics(State(received): State<Received>, body: Bytes) -> Vec<u8> {
        let request = ExportMetricsServiceRequest::decode(body).expect("a valid ExportMetricsServiceRequest");
        received.metrics.lock().unwrap().push(request);
        ExportMetricsServiceResponse { partial_success: None }.encode_to_vec()
    }
    async fn logs(State(received): State<Received>, body: Bytes) -> Vec<u8> {
        let request = ExportLogsServiceRequest::decode(body).expect("a valid ExportLogsServiceRequest");
        received.logs.lock().unwrap().push(request);
        ExportLogsServiceResponse { partial_success: None }.encode_to_vec()
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .with_state(received.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Receiver { addr, received, stop: Some(stop), task }
}
