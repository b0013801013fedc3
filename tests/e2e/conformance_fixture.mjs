// The MCP server the official conformance suite's *server* scenarios expect, on the official
// TypeScript SDK (@modelcontextprotocol/sdk, low-level `Server`), so the suite passes every
// scenario against it directly and any difference through the gateway is the gateway's.
//
//   PORT=3001 node conformance_fixture.mjs      binds 127.0.0.1 only
//   POST/GET/DELETE /mcp   streamable HTTP: sessions (404 for an unknown one), resumable SSE
//                          (per-stream event store, priming events, `retry`)
//
// What the scenarios of @modelcontextprotocol/conformance 0.1.16 (`--suite all`) look for:
//   tools      test_simple_text, test_image_content, test_audio_content (audio/wav),
//              test_embedded_resource, test_multiple_content_types, test_tool_with_logging (3 log
//              notifications), test_tool_with_progress (0/50/100 of 100), test_error_handling
//              (isError), test_sampling, test_elicitation, test_elicitation_sep1034_defaults,
//              test_elicitation_sep1330_enums, test_reconnection (closes its POST stream mid-call),
//              json_schema_2020_12_tool ($schema, $defs, additionalProperties kept verbatim)
//   resources  test://static-text, test://static-binary, test://template/{id}/data,
//              test://watched-resource (subscribe/unsubscribe)
//   prompts    test_simple_prompt, test_prompt_with_arguments, test_prompt_with_embedded_resource,
//              test_prompt_with_image
//   other      logging/setLevel, ping, completion/complete, DNS-rebinding protection (a Host or
//              Origin that is not localhost/127.0.0.1/[::1] gets 403)
//
// It is run from target/e2e/node (copied there by conftest.py) so its imports resolve to the
// SDK version pinned in tests/e2e/setup.sh.
import { randomUUID } from "node:crypto";
import express from "express";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema, CompleteRequestSchema, CreateMessageResultSchema, ElicitResultSchema, ErrorCode,
  GetPromptRequestSchema, LATEST_PROTOCOL_VERSION, ListPromptsRequestSchema, ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema, ListToolsRequestSchema, McpError, ReadResourceRequestSchema,
  SetLevelRequestSchema, SubscribeRequestSchema, SUPPORTED_PROTOCOL_VERSIONS, UnsubscribeRequestSchema,
  isInitializeRequest,
} from "@modelcontextprotocol/sdk/types.js";

// --- content -----------------------------------------------------------------------------------
// A 1x1 PNG and a valid, empty 8 kHz mono 16-bit WAV (a 44-byte RIFF header).
const PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
function emptyWav() {
  const h = Buffer.alloc(44);
  h.write("RIFF", 0); h.writeUInt32LE(36, 4); h.write("WAVE", 8); h.write("fmt ", 12);
  h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22); h.writeUInt32LE(8000, 24);
  h.writeUInt32LE(16000, 28); h.writeUInt16LE(2, 32); h.writeUInt16LE(16, 34); h.write("data", 36);
  return h.toString("base64");
}
const WAV_EMPTY = emptyWav();
const text = (t) => ({ type: "text", text: t });
const image = () => ({ type: "image", data: PNG_1PX, mimeType: "image/png" });
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const schema = (properties = {}, required = []) => ({ type: "object", properties, required });
const LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

// --- tools -------------------------------------------------------------------------------------
// name -> [description, inputSchema, handler(args, extra, session)]
const tools = {
  test_simple_text: ["Returns one text item", schema(),
    async () => ({ content: [text("This is a simple text response for testing.")] })],
  test_image_content: ["Returns one image item (PNG)", schema(),
    async () => ({ content: [image()] })],
  test_audio_content: ["Returns one audio item (WAV)", schema(),
    async () => ({ content: [{ type: "audio", data: WAV_EMPTY, mimeType: "audio/wav" }] })],
  test_embedded_resource: ["Returns one embedded resource", schema(),
    async () => ({ content: [{ type: "resource", resource: {
      uri: "test://embedded-resource", mimeType: "text/plain", text: "This is an embedded resource content." } }] })],
  test_multiple_content_types: ["Returns text, an image and an embedded resource", schema(),
    async () => ({ content: [text("Multiple content types test:"), image(), { type: "resource", resource: {
      uri: "test://mixed-content-resource", mimeType: "application/json", text: '{"test":"data","value":123}' } }] })],
  test_tool_with_logging: ["Sends three info log notifications 50 ms apart", schema(),
    async (_args, extra, session) => {
      for (const [i, message] of ["Tool execution started", "Tool processing data", "Tool execution completed"].entries()) {
        if (i) await delay(50);
        await session.log(extra, "info", message);
      }
      return { content: [text("Logging test completed")] };
    }],
  test_tool_with_progress: ["Reports progress 0, 50, 100 of 100 when given a progress token", schema(),
    async (_args, extra) => {
      const progressToken = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i) await delay(50);
        if (progressToken !== undefined) {
          await extra.sendNotification({ method: "notifications/progress", params: { progressToken, progress, total: 100 } });
        }
      }
      return { content: [text("Progress test completed")] };
    }],
  test_error_handling: ["Always fails with isError: true", schema(),
    async () => ({ isError: true, content: [text("This tool intentionally returns an error for testing")] })],
  test_sampling: ["Asks the client's LLM (sampling/createMessage)", schema({ prompt: { type: "string" } }, ["prompt"]),
    async (args, extra) => {
      const result = await extra.sendRequest({ method: "sampling/createMessage", params: {
        messages: [{ role: "user", content: text(String(args.prompt ?? "")) }], maxTokens: 100 } }, CreateMessageResultSchema);
      const answer = result.content?.type === "text" ? result.content.text : JSON.stringify(result.content);
      return { content: [text(`LLM response: ${answer}`)] };
    }],
  test_elicitation: ["Asks the user for a username and email", schema({ message: { type: "string" } }, ["message"]),
    async (args, extra) => elicit(extra, String(args.message ?? "Please provide your information"), schema({
      username: { type: "string", description: "User's response" },
      email: { type: "string", description: "User's email address" },
    }, ["username", "email"]))],
  test_elicitation_sep1034_defaults: ["Elicitation whose primitive fields have defaults (SEP-1034)", schema(),
    async (_args, extra) => elicit(extra, "Please review the defaults", schema({
      name: { type: "string", default: "John Doe" },
      age: { type: "integer", default: 30 },
      score: { type: "number", default: 95.5 },
      status: { type: "string", enum: ["active", "inactive", "pending"], default: "active" },
      verified: { type: "boolean", default: true },
    }))],
  test_elicitation_sep1330_enums: ["Elicitation with the five enum schema forms (SEP-1330)", schema(),
    async (_args, extra) => elicit(extra, "Please choose", schema({
      untitledSingle: { type: "string", enum: ["option1", "option2", "option3"] },
      titledSingle: { type: "string", oneOf: [
        { const: "value1", title: "First Option" }, { const: "value2", title: "Second Option" }] },
      legacyEnum: { type: "string", enum: ["opt1", "opt2", "opt3"], enumNames: ["Option One", "Option Two", "Option Three"] },
      untitledMulti: { type: "array", items: { type: "string", enum: ["option1", "option2", "option3"] } },
      titledMulti: { type: "array", items: { anyOf: [
        { const: "value1", title: "First Choice" }, { const: "value2", title: "Second Choice" }] } },
    }))],
  test_reconnection: ["Closes its SSE response stream mid-call (SEP-1699); the result follows on the resumed stream", schema(),
    async (_args, extra) => {
      await delay(100);
      extra.closeSSEStream?.(); // the client reconnects with GET + Last-Event-ID and gets the result there
      await delay(300);
      return { content: [text("Reconnection test completed successfully")] };
    }],
  json_schema_2020_12_tool: ["Input schema with JSON Schema 2020-12 keywords (SEP-1613)", {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    type: "object",
    $defs: { address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } } },
    properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
    additionalProperties: false,
  }, async (args) => ({ content: [text(`Received: ${JSON.stringify(args)}`)] })],
};

async function elicit(extra, message, requestedSchema) {
  const result = await extra.sendRequest({ method: "elicitation/create", params: { message, requestedSchema } }, ElicitResultSchema);
  return { content: [text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`)] };
}

// --- resources and prompts ---------------------------------------------------------------------
const resources = [
  { uri: "test://static-text", name: "static-text", mimeType: "text/plain", description: "A static text resource" },
  { uri: "test://static-binary", name: "static-binary", mimeType: "image/png", description: "A static binary resource" },
  { uri: "test://watched-resource", name: "watched-resource", mimeType: "text/plain", description: "A resource to subscribe to" },
];
const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

function readResource(uri) {
  if (uri === "test://static-text") return [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }];
  if (uri === "test://watched-resource") return [{ uri, mimeType: "text/plain", text: "Watched resource content." }];
  if (uri === "test://static-binary") return [{ uri, mimeType: "image/png", blob: PNG_1PX }];
  const m = TEMPLATE.exec(uri);
  if (m) return [{ uri, mimeType: "application/json", text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) }];
  throw new McpError(-32002, `Resource not found: ${uri}`, { uri });
}

const prompts = {
  test_simple_prompt: [{ description: "A prompt without arguments" },
    () => [{ role: "user", content: text("This is a simple prompt for testing.") }]],
  test_prompt_with_arguments: [{ description: "A prompt with two required arguments", arguments: [
    { name: "arg1", description: "First argument", required: true },
    { name: "arg2", description: "Second argument", required: true }] },
  (a) => [{ role: "user", content: text(`Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'`) }]],
  test_prompt_with_embedded_resource: [{ description: "A prompt embedding a resource", arguments: [
    { name: "resourceUri", description: "URI of the resource to embed", required: true }] },
  (a) => [{ role: "user", content: { type: "resource", resource: {
    uri: a.resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." } } },
  { role: "user", content: text("Please process the embedded resource above.") }]],
  test_prompt_with_image: [{ description: "A prompt with an image" },
    () => [{ role: "user", content: image() }, { role: "user", content: text("Please analyze the image above.") }]],
};

// --- one MCP server per session ----------------------------------------------------------------
function mcpServer() {
  const server = new Server({ name: "mcp-gateway-conformance-fixture", version: "1.0.0" }, {
    capabilities: { tools: {}, resources: { subscribe: true }, prompts: {}, logging: {}, completions: {} },
  });
  const session = {
    level: "info",
    subscriptions: new Set(),
    async log(extra, level, data) {
      if (LOG_LEVELS.indexOf(level) >= LOG_LEVELS.indexOf(this.level)) {
        await extra.sendNotification({ method: "notifications/message", params: { level, logger: "conformance-fixture", data } });
      }
    },
  };
  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: Object.entries(tools).map(([name, [description, inputSchema]]) => ({ name, description, inputSchema })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const tool = tools[request.params.name];
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    return tool[2](request.params.arguments ?? {}, extra, session);
  });
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: [{
    uriTemplate: "test://template/{id}/data", name: "template-data", mimeType: "application/json",
    description: "A resource template with an id parameter" }] }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => ({ contents: readResource(request.params.uri) }));
  server.setRequestHandler(SubscribeRequestSchema, async (request) => { session.subscriptions.add(request.params.uri); return {}; });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => { session.subscriptions.delete(request.params.uri); return {}; });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({
    prompts: Object.entries(prompts).map(([name, [meta]]) => ({ name, ...meta })),
  }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const prompt = prompts[request.params.name];
    if (!prompt) throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${request.params.name}`);
    return { messages: prompt[1](request.params.arguments ?? {}) };
  });
  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const prefix = request.params.argument?.value ?? "";
    const values = ["paris", "park", "party", "test", "testing"].filter((v) => v.startsWith(prefix));
    return { completion: { values, total: values.length, hasMore: false } };
  });
  server.setRequestHandler(SetLevelRequestSchema, async (request) => { session.level = request.params.level; return {}; });
  return server;
}

// Resumability: events are kept per stream; a Last-Event-ID replays the rest of its own stream only.
class StreamEvents {
  constructor() { this.events = []; } // {id, streamId, message}
  async storeEvent(streamId, message) {
    const id = `${streamId}.${this.events.length}`;
    this.events.push({ id, streamId, message });
    return id;
  }
  async getStreamIdForEventId(eventId) { return this.events.find((e) => e.id === eventId)?.streamId; }
  async replayEventsAfter(lastEventId, { send }) {
    const at = this.events.findIndex((e) => e.id === lastEventId);
    if (at < 0) return "";
    const { streamId } = this.events[at];
    for (const e of this.events.slice(at + 1)) if (e.streamId === streamId) await send(e.id, e.message);
    return streamId;
  }
}

// --- HTTP ----------------------------------------------------------------------------------------
const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);
const hostname = (hostHeader) => { try { return new URL(`http://${hostHeader}`).hostname; } catch { return null; } };
const jsonRpcError = (res, status, code, message) => res.status(status).json({ jsonrpc: "2.0", error: { code, message }, id: null });

const app = express();
app.use(express.json({ limit: "4mb" }));
app.use((req, res, next) => { // DNS-rebinding protection
  if (!LOOPBACK.has(hostname(req.headers.host ?? ""))) return jsonRpcError(res, 403, -32000, `Forbidden Host: ${req.headers.host}`);
  const origin = req.headers.origin;
  let originHost = null;
  try { originHost = origin && new URL(origin).hostname; } catch { /* unparsable: refused below */ }
  if (origin && !LOOPBACK.has(originHost)) return jsonRpcError(res, 403, -32000, `Forbidden Origin: ${origin}`);
  next();
});

const sessions = new Map(); // Mcp-Session-Id -> { transport, version }
app.all("/mcp", async (req, res) => {
  const id = req.headers["mcp-session-id"];
  let entry = id ? sessions.get(id) : undefined;
  if (id && !entry) return jsonRpcError(res, 404, -32001, "Session not found");
  if (!entry) {
    if (req.method !== "POST" || !isInitializeRequest(req.body)) {
      return jsonRpcError(res, 400, -32000, "Bad Request: no Mcp-Session-Id (send initialize first)");
    }
    const asked = req.body.params.protocolVersion;
    entry = { version: SUPPORTED_PROTOCOL_VERSIONS.includes(asked) ? asked : LATEST_PROTOCOL_VERSION };
    entry.transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new StreamEvents(),
      retryInterval: 500,
      onsessioninitialized: (sid) => sessions.set(sid, entry),
    });
    entry.transport.onclose = () => entry.transport.sessionId && sessions.delete(entry.transport.sessionId);
    await mcpServer().connect(entry.transport);
  } else if (entry.version >= "2025-11-25" && (req.headers["mcp-protocol-version"] ?? "") < entry.version) {
    // The SDK decides per request, from MCP-Protocol-Version, whether a POST stream gets a priming
    // event and may be closed mid-call. The suite's server-sse-polling scenario sends 2025-03-26 on
    // a session it negotiated as 2025-11-25; we go by the session's negotiated version, so the
    // scenario exercises stream close and GET + Last-Event-ID resumption (else it only warns).
    req.headers["mcp-protocol-version"] = entry.version;
    const raw = req.rawHeaders; // what the SDK's Node adapter actually reads
    for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === "mcp-protocol-version") raw[i + 1] = entry.version;
  }
  await entry.transport.handleRequest(req, res, req.body);
});

const port = Number(process.env.PORT);
if (!port) { console.error("conformance_fixture.mjs: set PORT"); process.exit(2); }
app.listen(port, "127.0.0.1", () => console.error(`conformance fixture on http://127.0.0.1:${port}/mcp`));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
