// A Loom tool component written in JavaScript.
//
// componentize-js (SpiderMonkey, pre-initialised with Wizer) turns this ES
// module into a WebAssembly component of the `tool-plugin` world of
// `wit/plugin@0.1.3`:
//
//   npm install
//   npm run build          # -> js-tool.wasm
//
// WIT maps to JavaScript the way jco does: interface imports are ES module
// imports (`loom:plugin/context@0.1.3`), the exported `tool` interface is the
// exported `tool` object, kebab-case names become camelCase, `option<T>` is
// `T | undefined`, and a `result<T, E>` export returns `T` or throws `E` (a
// variant such as `{ tag: 'denied', val: 'why' }`).
//
// Two tools:
// * `js_run_context` answers who the call serves, as the host told it
//   through the `context` import (never from the arguments);
// * `js_http_get` fetches a URL with `fetch` (wasi:http underneath). It
//   works only when the tenant grants the destination and this plugin's
//   manifest (`js-tool.toml`) requests it; otherwise the host refuses the
//   request and the tool answers `denied`.

import { current, idempotencyKey, log } from 'loom:plugin/context@0.1.3';

/** Most response bytes `js_http_get` returns. */
const MAX_BODY = 4096;

/** The JSON Schema of an object with `properties`, all of them `required`. */
function objectSchema(properties, required = []) {
  return JSON.stringify({ type: 'object', properties, required, additionalProperties: false });
}

/** The tool error variant for invalid arguments. */
function invalid(message) {
  return { tag: 'invalid-arguments', val: message };
}

/** Parse the arguments JSON; an empty string counts as `{}`. */
function parseArguments(text) {
  if (text.trim() === '') {
    return {};
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw invalid(`arguments are not JSON: ${error}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid('arguments must be a JSON object');
  }
  return value;
}

/** `js_run_context`: the run context, as JSON. */
function runContext() {
  const context = current();
  log('info', 'js_run_context called');
  return {
    language: 'javascript',
    tenant: context.tenant,
    user_id: context.userId ?? null,
    session_id: context.sessionId ?? null,
    run_id: context.runId ?? null,
    metadata: Object.fromEntries(context.metadata),
    idempotency_key: idempotencyKey() ?? null,
  };
}

/** `js_http_get`: GET `url`; a refused request is `denied`. */
async function httpGet(args) {
  if (typeof args.url !== 'string') {
    throw invalid('`url` must be a string');
  }
  let response;
  try {
    response = await fetch(args.url);
  } catch (error) {
    // The host refuses destinations the tenant did not grant; the guest
    // sees the request fail before anything is sent.
    throw { tag: 'denied', val: `fetch ${args.url} refused: ${error}` };
  }
  const body = await response.text();
  return { status: response.status, body: body.slice(0, MAX_BODY) };
}

/** The exported `loom:plugin/tool@0.1.3` interface. */
export const tool = {
  /** The tools this component offers; the same for every caller. */
  list() {
    return [
      {
        name: 'js_run_context',
        description: 'Return the tenant, user, session and run this call serves (JavaScript)',
        parameters: objectSchema({}),
        destructive: false,
        idempotent: true,
      },
      {
        name: 'js_http_get',
        description: 'Fetch a URL with HTTP GET and return its status and the start of its body',
        parameters: objectSchema({ url: { type: 'string', description: 'The URL' } }, ['url']),
        destructive: false,
        idempotent: true,
      },
    ];
  },

  /**
   * Run tool `name`. componentize-js runs the event loop until the promise
   * an export returns settles, so `fetch` can be awaited.
   */
  async invoke(name, argumentsJson) {
    const args = parseArguments(argumentsJson);
    switch (name) {
      case 'js_run_context':
        return JSON.stringify(runContext());
      case 'js_http_get':
        return JSON.stringify(await httpGet(args));
      default:
        throw { tag: 'unknown-tool', val: name };
    }
  },
};
