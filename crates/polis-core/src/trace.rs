//! Trace context that follows messages across hops (ADR 0010).
//!
//! A message carries the W3C `traceparent` of the span that wrote it to an
//! outbox ([`Metadata::traceparent`](crate::Metadata)); the consumer that
//! handles it opens its span as that span's remote child, so one request's
//! whole flow — every command, reply, event and deadline — is one trace.
//!
//! - [`for_outbox`]: what a store writes as a message's `traceparent`: the
//!   current span's context (and an `polis.outbox.write` event on that span
//!   naming the message), or, outside any traced span, what the message
//!   already carries. Both stores call it in `send` and `schedule`.
//! - [`set_remote_parent`] / [`add_link`]: a consumer's (or an HTTP
//!   request's) span continues a trace, or points at one.
//! - [`parse`] / [`format()`]: the `traceparent` text, version `00`.
//!
//! The functions work on `tracing` spans through `tracing-opentelemetry`
//! and do nothing unless an OpenTelemetry layer is installed (polis-runtime
//! installs one when export is configured): then every span's context is
//! invalid, nothing is captured, and a message keeps the `traceparent` it
//! was given. This crate has the OpenTelemetry API only, no SDK or exporter.

use std::borrow::Cow;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::Message;

/// The name of the span event a store records on the span that wrote a
/// message to the outbox (or scheduled it); its `message_id` attribute names
/// the message.
pub const OUTBOX_WRITE_EVENT: &str = "polis.outbox.write";

/// The `traceparent` version this module writes.
const VERSION: &str = "00";

/// The current span's trace context as a `traceparent`, when the current
/// span is part of an OpenTelemetry trace.
pub fn current() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| format(span_context))
}

/// The `traceparent` to store with `message` as it is written to the
/// outbox or the schedule: the current span's, so the consumer's span will
/// be that span's child, with a [`OUTBOX_WRITE_EVENT`] recorded on it;
/// outside a traced span, the message's own (copied from the message that
/// caused it by [`Message::caused`], or none).
pub fn for_outbox(message: &Message) -> Option<Cow<'_, str>> {
    let span = tracing::Span::current();
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return message.metadata.traceparent.as_deref().map(Cow::Borrowed);
    }
    span.add_event(
        OUTBOX_WRITE_EVENT,
        vec![
            KeyValue::new("message_id", message.id.to_string()),
            KeyValue::new("message_type", message.message_type.clone()),
            KeyValue::new("target", message.target.clone()),
        ],
    );
    Some(Cow::Owned(format(&span_context)))
}

/// Makes `span` continue the trace of `traceparent`, as the remote child of
/// the span it names. Call it before the span is first entered; a missing
/// or unreadable `traceparent` leaves the span where it is (a new trace, or
/// its local parent's).
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(parent) = traceparent.and_then(parse) else { return };
    let context = opentelemetry::Context::new().with_remote_span_context(parent);
    // Without an OpenTelemetry layer there is nothing to set; that is fine.
    let _ = span.set_parent(context);
}

/// Adds to `span` a link to the span `traceparent` names, with `kind` (why
/// the link is there: `redelivery`, `retry`, ...) and `attempt` as the
/// link's attributes.
pub fn add_link(span: &tracing::Span, traceparent: Option<&str>, kind: &'static str, attempt: u32) {
    let Some(linked) = traceparent.and_then(parse) else { return };
    span.add_link_with_attributes(
        linked,
        vec![KeyValue::new("polis.link", kind), KeyValue::new("attempt", i64::from(attempt))],
    );
}

/// The `traceparent` of `span`, when it is part of an OpenTelemetry trace.
pub fn of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| format(span_context))
}

/// Reads a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`, lower
/// case hex) into a remote span context; `None` for anything else, an all
/// zero id, or version `ff`. A later version is read by its first four
/// fields, as the W3C recommendation asks.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let hex =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || (version == VERSION && rest.is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context =
        SpanContext::new(trace_id, span_id, TraceFlags::new(flags) & TraceFlags::SAMPLED, true, TraceState::NONE);
    context.is_valid().then_some(context)
}

/// `context` as a version `00` `traceparent`.
pub fn format(context: &SpanContext) -> String {
    format!(
        "{VERSION}-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse(EXAMPLE).unwrap();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(format(&context), EXAMPLE);
        let unsampled = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // A later version may add fields after the four it shares with 00.
        assert!(parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later").is_some());
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_captured() {
        let message = crate::Message::event("s", "t", "k", serde_json::json!({}));
        assert_eq!(current(), None);
        assert_eq!(for_outbox(&message), None);
        let given = message.with_metadata(crate::Metadata { traceparent: Some(EXAMPLE.into()), ..Default::default() });
        assert_eq!(for_outbox(&given).as_deref(), Some(EXAMPLE));
    }
}
