//! Span export over OTLP/HTTP (protobuf), for the `tracing:` block.
//!
//! The library records each request (and tunnel) as a `tracing` span with target
//! [`switchback::trace::TARGET`] whose fields carry the W3C ids the upstream was told. A
//! [`SpanLayer`] in the binary's subscriber turns each closed, sampled span into an OTLP span
//! under those very ids (so the backend links the upstream's spans to it) and queues it; one
//! task batches the queue and posts it to `<otlp_endpoint>/v1/traces`.
//!
//! Off the request path and bounded: the queue holds [`QUEUE`] spans, and a span that finds
//! it full is dropped and counted (`switchback_trace_spans_dropped_total`), so a collector
//! that is down or slow costs memory up to the queue and nothing else. A batch that fails is
//! dropped too (`switchback_trace_export_failures_total`), never retried. Until an exporter
//! is installed (no `tracing:` block) the layer wants no span at all, so the library's spans
//! stay disabled and cost nothing.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message as _;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use switchback_config::Tracing;

/// Spans waiting for export at most; past it new ones are dropped.
pub(crate) const QUEUE: usize = 4096;
/// Spans in one request to the collector at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans dropped because the queue was full.
pub(crate) const SPANS_DROPPED: &str = "switchback_trace_spans_dropped_total";
/// Batches the collector did not take (unreachable, slow, or an error status).
pub(crate) const EXPORT_FAILURES: &str = "switchback_trace_export_failures_total";
/// Spans the collector took.
pub(crate) const SPANS_EXPORTED: &str = "switchback_trace_spans_exported_total";

/// Where finished spans go, once the config has a `tracing:` block.
static QUEUE_TX: OnceLock<mpsc::Sender<Span>> = OnceLock::new();

/// Whether spans are exported: the layer's interest.
fn exporting() -> bool {
    QUEUE_TX.get().is_some()
}

/// Starts the export task on the current runtime and turns the layer on. Once per process:
/// a reload that changes the block takes effect on restart.
pub(crate) fn install(config: &Tracing) {
    let (tx, rx) = mpsc::channel(QUEUE);
    if QUEUE_TX.set(tx).is_err() {
        return;
    }
    let url = format!("{}/v1/traces", config.otlp_endpoint);
    tracing::info!(%url, sampling = config.sampling, "exporting spans over OTLP");
    tokio::spawn(export(rx, url, resource(&config.service_name)));
    // The layer's interest changed: callsites cached as "never" are asked again.
    tracing::callsite::rebuild_interest_cache();
}

fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            key_value(
                "service.name",
                any_value::Value::StringValue(service_name.to_owned()),
            ),
            key_value(
                "service.version",
                any_value::Value::StringValue(env!("CARGO_PKG_VERSION").into()),
            ),
        ],
        ..Default::default()
    }
}

/// Batches the queue and posts each batch.
async fn export(mut rx: mpsc::Receiver<Span>, url: String, resource: Resource) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "switchback".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: std::mem::take(&mut batch),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let sent = match req {
            Ok(req) => tokio::time::timeout(EXPORT_TIMEOUT, client.request(req)).await,
            Err(e) => {
                ::metrics::counter!(EXPORT_FAILURES).increment(1);
                tracing::warn!(error = %e, %url, "the OTLP endpoint makes no request; the batch is dropped");
                continue;
            }
        };
        match sent {
            Ok(Ok(res)) if res.status().is_success() => {
                ::metrics::counter!(SPANS_EXPORTED).increment(count);
            }
            outcome => {
                ::metrics::counter!(EXPORT_FAILURES).increment(1);
                let why = match outcome {
                    Ok(Ok(res)) => format!("answered {}", res.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                tracing::debug!(%url, %why, spans = count, "span export failed; the batch is dropped");
            }
        }
    }
}

/// The `tracing_subscriber` layer that collects the library's spans for export.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SpanLayer;

/// The [`SpanLayer`]'s filter: the library's spans and their events, only while exporting.
///
/// Its level hint matters as much as its answer: without one, `tracing` takes it that this
/// layer may want any level, and every `trace!` and `debug!` on the hot path (hyper's, the
/// relay's) gets past the level check to ask its callsite, which cost the relay a fifth more
/// CPU per GB. Not exporting, it says `OFF`; exporting, `DEBUG` (the library's events).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanFilter;

impl<S> tracing_subscriber::layer::Filter<S> for SpanFilter {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if Self::wants(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(if exporting() {
            tracing::level_filters::LevelFilter::DEBUG
        } else {
            tracing::level_filters::LevelFilter::OFF
        })
    }
}

impl SpanFilter {
    fn wants(meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == switchback::trace::TARGET && exporting()
    }
}

/// A span being recorded.
struct Recording {
    span: Span,
    sampled: bool,
}

/// Field names the span carries as ids and names, not as attributes.
const NOT_ATTRIBUTES: &[&str] = &[
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace.sampled",
    "otel.name",
    "otel.kind",
    "message",
];

impl Visit for Recording {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.span.trace_id = hex(value),
            "span_id" => self.span.span_id = hex(value),
            "parent_span_id" => self.span.parent_span_id = hex(value),
            "otel.name" => self.span.name = value.to_owned(),
            name if !NOT_ATTRIBUTES.contains(&name) => {
                set(
                    &mut self.span.attributes,
                    name,
                    any_value::Value::StringValue(value.to_owned()),
                );
            }
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "trace.sampled" {
            self.sampled = value;
        } else {
            set(
                &mut self.span.attributes,
                field.name(),
                any_value::Value::BoolValue(value),
            );
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        set(
            &mut self.span.attributes,
            field.name(),
            any_value::Value::IntValue(value),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        set(
            &mut self.span.attributes,
            field.name(),
            any_value::Value::IntValue(value),
        );
    }
}

/// An event's message and fields.
#[derive(Default)]
struct EventFields {
    name: String,
    attributes: Vec<KeyValue>,
}

impl Visit for EventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.name = text;
        } else {
            set(
                &mut self.attributes,
                field.name(),
                any_value::Value::StringValue(text),
            );
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        set(
            &mut self.attributes,
            field.name(),
            any_value::Value::StringValue(value.to_owned()),
        );
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        set(
            &mut self.attributes,
            field.name(),
            any_value::Value::IntValue(value),
        );
    }
}

fn key_value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Sets attribute `key` (a field recorded twice keeps its last value).
fn set(attributes: &mut Vec<KeyValue>, key: &str, value: any_value::Value) {
    match attributes.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = Some(AnyValue { value: Some(value) }),
        None => attributes.push(key_value(key, value)),
    }
}

/// Hex digits into bytes (the library writes ids as lowercase hex); empty if they aren't.
fn hex(text: &str) -> Vec<u8> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Vec::new();
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_default()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut recording = Recording {
            span: Span {
                name: attrs.metadata().name().to_owned(),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: now_nanos(),
                ..Default::default()
            },
            sampled: false,
        };
        attrs.record(&mut recording);
        // An unsampled span is never exported: nothing more is recorded for it.
        if recording.sampled {
            span.extensions_mut().insert(recording);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(recording) = span.extensions_mut().get_mut::<Recording>()
        {
            values.record(recording);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else { return };
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if let Some(recording) = span.extensions_mut().get_mut::<Recording>() {
            recording.span.events.push(span::Event {
                time_unix_nano: now_nanos(),
                name: fields.name,
                attributes: fields.attributes,
                dropped_attributes_count: 0,
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(Recording { mut span, sampled }) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        let Some(tx) = QUEUE_TX.get().filter(|_| sampled) else {
            return;
        };
        span.end_time_unix_nano = now_nanos();
        span.flags = 0x100 | u32::from(!span.parent_span_id.is_empty()) << 9 | 1;
        let status = span
            .attributes
            .iter()
            .find(|kv| kv.key == "http.response.status_code");
        if let Some(any_value::Value::IntValue(code)) =
            status.and_then(|kv| kv.value.as_ref()?.value.as_ref())
            && *code >= 500
        {
            span.status = Some(Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            });
        }
        if tx.try_send(span).is_err() {
            ::metrics::counter!(SPANS_DROPPED).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_hex() {
        assert_eq!(
            hex("00f067aa0ba902b7"),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(hex("0g").is_empty() && hex("abc").is_empty());
    }

    #[test]
    fn attributes_keep_their_last_value() {
        let mut attrs = Vec::new();
        set(&mut attrs, "a", any_value::Value::IntValue(1));
        set(&mut attrs, "a", any_value::Value::IntValue(2));
        assert_eq!(attrs.len(), 1);
        assert_eq!(
            attrs[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(2))
        );
    }
}
