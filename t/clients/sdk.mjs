// The official Anthropic TypeScript SDK against the relay, configured the way
// a user would: ANTHROPIC_BASE_URL (the relay location) and ANTHROPIC_API_KEY
// (a relay key) from the environment. Makes each kind of call once and prints
// one JSON object with what the SDK returned, for t/relay/clients.t to check.
//
//   ANTHROPIC_BASE_URL=http://127.0.0.1:PORT/api ANTHROPIC_API_KEY=cr_... node sdk.mjs
//
// Each call carries x-mock-* figures (per-request headers, an SDK option) so
// the test can tell the calls apart in the usage the relay counted. Retries
// are off: a failure must show, not be hidden by a second request.
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({ maxRetries: 0, timeout: 60000 });
const model = 'claude-sonnet-4-20250514';
const ask = [{ role: 'user', content: 'say hello' }];
const weather = {
    name: 'get_weather',
    description: 'The weather at a place',
    input_schema: { type: 'object', properties: { place: { type: 'string' } }, required: ['place'] },
};
const figures = (input, output) => ({
    headers: { 'x-mock-input-tokens': String(input), 'x-mock-output-tokens': String(output) },
});
const text = (content) => content.filter((b) => b.type === 'text').map((b) => b.text).join('');
const out = {};

// A failed call is recorded (its status and the error body the SDK parsed) and the run goes on.
async function step(name, fn) {
    try {
        out[name] = await fn();
    } catch (e) {
        out[name] = { error: String(e), status: e.status ?? null, body: e.error ?? null };
    }
}

await step('create', async () => {
    const m = await client.messages.create({ model, max_tokens: 64, messages: ask }, figures(11, 7));
    return { id: m.id, model: m.model, text: text(m.content), stop_reason: m.stop_reason, usage: m.usage };
});

await step('stream', async () => {
    const s = client.messages.stream({ model, max_tokens: 64, messages: ask, tools: [weather] },
                                     figures(13, 5));
    const events = [];
    for await (const ev of s) {
        events.push(ev.type);
    }
    const m = await s.finalMessage();
    return { events, text: text(m.content), stop_reason: m.stop_reason, usage: m.usage };
});

await step('create_stream', async () => {
    const s = await client.messages.create({ model, max_tokens: 64, messages: ask, stream: true },
                                           figures(3, 2));
    const events = [];
    let t = '';
    for await (const ev of s) {
        events.push(ev.type);
        if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') {
            t += ev.delta.text;
        }
    }
    return { events, text: t };
});

await step('beta_create', async () => {
    const m = await client.beta.messages.create({ model, max_tokens: 64, messages: ask },
                                                figures(2, 1));
    return { text: text(m.content), usage: m.usage };
});

await step('count_tokens', async () => {
    const c = await client.messages.countTokens({ model, messages: ask, tools: [weather] },
                                                figures(17, 0));
    return c;
});

await step('models_list', async () => {
    const ids = [];
    for await (const m of client.models.list()) {
        ids.push(m.id);
    }
    return { ids };
});

await step('models_retrieve', async () => {
    const m = await client.models.retrieve(model);
    return { id: m.id, display_name: m.display_name, type: m.type };
});

await step('models_retrieve_unknown', async () => client.models.retrieve('no-such-model'));

// a well-formed key the relay does not know: the SDK must get the relay's refusal
await step('unknown_key', async () => {
    const other = new Anthropic({ maxRetries: 0, timeout: 60000, apiKey: 'cr_' + '0'.repeat(64) });
    return other.messages.create({ model, max_tokens: 64, messages: ask });
});

process.stdout.write(JSON.stringify(out) + '\n');
