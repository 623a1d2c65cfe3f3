"""The fast ``traceparent`` reader agrees with OpenTelemetry's propagator."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stem_observe.sinks._traceparent import remote_parent, sampled_trace_id

PROPAGATOR = TraceContextTextMapPropagator()

hex_digits = st.text(alphabet="0123456789abcdef", min_size=1, max_size=1)
headers = st.one_of(
    st.builds(
        lambda version, trace, span, flags: f"{version}-{trace}-{span}-{flags}",
        st.sampled_from(["00", "01", "ff", "0g"]),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=31, max_size=33),
        st.text(alphabet="0123456789abcdef", min_size=15, max_size=17),
        st.text(alphabet="0123456789abcdefx", min_size=2, max_size=2),
    ),
    st.text(max_size=70),
)


@given(headers)
def test_remote_parent_matches_the_propagator(value: str) -> None:
    carrier = {"traceparent": value}
    expected = get_current_span(PROPAGATOR.extract(carrier, context=Context())).get_span_context()
    parent = remote_parent(carrier)
    if not expected.is_valid:
        assert parent is None
        return
    assert parent is not None
    actual = get_current_span(parent).get_span_context()
    assert (actual.trace_id, actual.span_id, actual.is_remote) == (
        expected.trace_id, expected.span_id, True)
    assert actual.trace_flags.sampled == expected.trace_flags.sampled


def test_tracestate_is_kept_through_the_propagator() -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
               "tracestate": "vendor=abc"}
    parent = remote_parent(carrier)
    assert parent is not None
    assert get_current_span(parent).get_span_context().trace_state.get("vendor") == "abc"


def test_sampled_trace_id() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"
    assert sampled_trace_id({"traceparent": tp + "01"}) == "0af7651916cd43dd8448eb211c80319c"
    assert sampled_trace_id({"traceparent": tp + "00"}) is None
    assert sampled_trace_id({"traceparent": "garbage"}) is None
    assert sampled_trace_id(None) is None
