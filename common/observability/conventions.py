"""Every OpenTelemetry semantic-convention name this service emits, in one module.

The GenAI conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/) are still in development:
names move (the client metrics are being renamed to `gen_ai.client.inference.*`). Change them here.
"""

from __future__ import annotations

# --- GenAI spans: `chat {model}` per model call, `invoke_workflow {name}` per run -----------------------
OPERATION_NAME = "gen_ai.operation.name"
OPERATION_CHAT = "chat"
OPERATION_INVOKE_WORKFLOW = "invoke_workflow"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CONVERSATION_ID = "gen_ai.conversation.id"
WORKFLOW_NAME = "gen_ai.workflow.name"
#: Content: recorded only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` is true.
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
ERROR_TYPE = "error.type"

# --- our own attributes on workflow spans (no convention names these yet) ----------------------------
WORKFLOW_KIND = "aibattle.run.kind"  # "reasoning" or "conversation"
WORKFLOW_STRATEGY = "aibattle.reasoning.strategy"
WORKFLOW_ITERATIONS = "aibattle.reasoning.iterations"
EVENT_STUCK = "aibattle.stuck"  # a span event per stuck signal
EVENT_HANDOFF = "aibattle.handoff"  # a span event per handoff between models
STUCK_SIGNAL = "aibattle.stuck.signal"
WORKFLOW_ID = "aibattle.run.id"  # the resource's id (a conversation's is also gen_ai.conversation.id)
WORKFLOW_STATUS = "aibattle.run.status"  # how the run ended: completed, failed, cancelled, ...
EVENT_ESCALATION = "aibattle.escalation"  # a cascade escalating to its secondary model
HANDOFF_FROM = "aibattle.handoff.from_model"
HANDOFF_TO = "aibattle.handoff.to_model"
EVENT_MODEL = "aibattle.model"  # the model a stuck signal was found in
MODEL_ID = "aibattle.model.id"  # our configured model id (gen_ai.request.model is the provider's name)

# gen_ai.provider.name where the conventions' well-known value differs from our provider's name.
PROVIDER_NAMES = {"gemini": "gcp.gemini"}

# --- GenAI metrics (OTLP) ---------------------------------------------------------------------------
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
TOKEN_TYPE = "gen_ai.token.type"
TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"

# --- HTTP and RPC (stable conventions) ---------------------------------------------------------------
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_ROUTE = "http.route"
URL_FULL = "url.full"
URL_PATH = "url.path"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
