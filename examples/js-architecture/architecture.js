// A Loom architecture (agent loop) written in JavaScript: `js-react`.
//
// componentize-js turns this ES module into a component of the
// `architecture-plugin` world of `wit/plugin@0.1.3`:
//
//   npm install
//   npm run build          # -> js-architecture.wasm
//
// The loop: ask the model (offering the run's tools), run every tool call
// it asks for in one `call-tools` (the host runs them in parallel, each in
// its own sandbox with the tenant's grants), add the results to the
// conversation, and repeat until the model answers without calling a tool
// or the run's turn cap is reached.
//
// WIT in JavaScript (jco's mapping): records are objects with camelCase
// fields, enums are strings ('assistant'), `u64` is a BigInt, `option<T>` is
// `T | undefined`. An import returning `result<T, E>` returns `T` or throws
// an error whose `payload` is `E`; an export returns `T` or throws `E`.

import { callTools, complete, emit, tools } from 'loom:plugin/harness@0.1.3';

/** A message of `role` with `content` and nothing else. */
function message(role, content) {
  return { role, content, name: undefined, toolCallId: undefined, toolCalls: [] };
}

/** What the model reads for one tool result. */
function observation(result) {
  const outcome = result.outcome;
  let content;
  if (outcome.tag === 'ok') {
    content = outcome.val;
  } else if (outcome.val.tag === 'denied') {
    content = `DENIED: ${outcome.val.val}`;
  } else {
    content = `ERROR: ${outcome.val.tag}: ${outcome.val.val}`;
  }
  return {
    role: 'tool',
    content,
    name: result.name,
    toolCallId: result.callId,
    toolCalls: [],
  };
}

/** A failed harness call as the architecture's `run-error`. */
function harnessError(error) {
  const payload = error?.payload;
  if (payload === undefined) {
    return { tag: 'failed', val: String(error) };
  }
  const detail = payload.val === undefined ? '' : `: ${payload.val}`;
  return { tag: 'harness', val: `${payload.tag}${detail}` };
}

/** The exported `loom:plugin/architecture@0.1.3` interface. */
export const architecture = {
  describe() {
    return {
      name: 'js-react',
      description: 'Call tools until the model answers (an example architecture in JavaScript)',
      workers: [],
      configSchema: JSON.stringify({ type: 'object', properties: {}, additionalProperties: false }),
    };
  },

  run(input) {
    const conversation = [...input.history];
    const added = [];
    const push = (m) => {
      conversation.push(m);
      added.push(m);
    };
    if (input.history.length === 0 && input.instructions !== '') {
      push(message('system', input.instructions));
    }
    push(message('user', input.prompt));

    const offered = tools();
    const usage = { inputTokens: 0n, outputTokens: 0n, cachedTokens: 0n };
    let cost = 0;
    let turns = 0;
    let last = '';
    const output = (text, interrupted) => ({
      output: text,
      newMessages: added,
      turns,
      usage,
      costUsd: cost,
      interrupted,
    });

    while (turns < input.maxTurns) {
      let completion;
      try {
        completion = complete({
          messages: conversation,
          tools: offered,
          temperature: undefined,
          maxOutputTokens: undefined,
          outputSchema: undefined,
          role: undefined,
        });
      } catch (error) {
        throw harnessError(error);
      }
      turns += 1;
      usage.inputTokens += completion.usage.inputTokens;
      usage.outputTokens += completion.usage.outputTokens;
      usage.cachedTokens += completion.usage.cachedTokens;
      cost += completion.costUsd;
      push(completion.message);
      last = completion.message.content;
      const calls = completion.message.toolCalls;
      if (calls.length === 0) {
        emit({ kind: 'answered', data: JSON.stringify({ language: 'javascript', turns }) });
        return output(last, undefined);
      }
      for (const result of callTools(calls)) {
        push(observation(result));
      }
    }
    return output(last, 'max_turns');
  },
};
