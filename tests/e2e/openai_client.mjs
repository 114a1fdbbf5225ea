// banditd through the official `openai` npm client (run by t_openai_client.sh).
// Env: E2E_BASE_URL = http://127.0.0.1:PORT of a banditd whose arms "cheap" and
// "strong" point at fake_upstream.py (models fake-cheap-1 / fake-strong-1).
import OpenAI from 'openai';

const base = process.env.E2E_BASE_URL;
if (!base) {
    console.error('E2E_BASE_URL not set');
    process.exit(2);
}
const client = new OpenAI({
    apiKey: 'client-key-from-openai-node',
    baseURL: `${base}/v1`,
    maxRetries: 0,
    timeout: 20000,
});

let passed = 0;
let failed = 0;
function check(cond, msg) {
    if (!cond) throw new Error(`assertion failed: ${msg}`);
}
async function tcase(name, fn) {
    try {
        await fn();
        passed++;
        console.log(`PASS ${name}`);
    } catch (e) {
        failed++;
        console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
}
// what fake_upstream.stream_deltas() sends for this user text
const deltas = (text, n) => Array.from({ length: n }, (_, i) => `part${i}(${text.slice(0, 16)}) `);
const HEX32 = /^[0-9a-f]{32}$/;

function checkHeaders(h, arm) {
    check(HEX32.test(h.get('x-bandit-request-id') || ''), `request id ${h.get('x-bandit-request-id')}`);
    if (arm) check(h.get('x-bandit-arm') === arm, `arm ${h.get('x-bandit-arm')}`);
    else check(['cheap', 'strong'].includes(h.get('x-bandit-arm')), `arm ${h.get('x-bandit-arm')}`);
    check(Number.isFinite(Number(h.get('x-bandit-cost-usd'))), `cost ${h.get('x-bandit-cost-usd')}`);
    check(/^\d+$/.test(h.get('x-bandit-fallbacks') || ''), `fallbacks ${h.get('x-bandit-fallbacks')}`);
}

async function postFeedback(requestId, reward) {
    return fetch(`${base}/feedback`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ request_id: requestId, reward }),
    });
}

await tcase('chat.completions.create (auto)', async () => {
    const text = 'hello from openai-node';
    const c = await client.chat.completions.create({
        model: 'auto',
        messages: [{ role: 'user', content: text }],
    });
    check(c.object === 'chat.completion', `object ${c.object}`);
    const content = c.choices[0].message.content;
    check(/^echo model=fake-(cheap|strong)-1 auth=[0-9a-f]{16} user=/.test(content), content);
    check(content.endsWith(`user=${text}`), content);
    check(c.usage && c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0, 'usage');
});

await tcase('create pinned + withResponse headers + feedback', async () => {
    const text = 'pinned strong via openai-node';
    const { data, response } = await client.chat.completions
        .create({ model: 'strong', messages: [{ role: 'user', content: text }] })
        .withResponse();
    check(response.status === 200, `status ${response.status}`);
    checkHeaders(response.headers, 'strong');
    check(data.choices[0].message.content.startsWith('echo model=fake-strong-1 '), data.choices[0].message.content);
    check(data.model === 'fake-strong-1', `model ${data.model}`);
    const rid = response.headers.get('x-bandit-request-id');
    const fb = await postFeedback(rid, 0.9);
    check(fb.status === 200, `feedback status ${fb.status}: ${await fb.text()}`);
    const again = await postFeedback(rid, 0.9);
    check(again.status === 409, `second feedback status ${again.status}`);
});

await tcase('stream: true', async () => {
    const text = '@fake stream:4 node stream';
    const stream = await client.chat.completions.create({
        model: 'cheap',
        messages: [{ role: 'user', content: text }],
        stream: true,
        stream_options: { include_usage: true },
    });
    let chunks = 0;
    let got = '';
    let usage = null;
    let finish = null;
    for await (const ch of stream) {
        chunks++;
        check(ch.object === 'chat.completion.chunk', `chunk object ${ch.object}`);
        const choice = ch.choices && ch.choices[0];
        if (choice && choice.delta && choice.delta.content) got += choice.delta.content;
        if (choice && choice.finish_reason) finish = choice.finish_reason;
        if (ch.usage) usage = ch.usage;
    }
    check(chunks === 7, `chunks ${chunks}`); // role + 4 deltas + finish + usage
    check(got === deltas(text, 4).join(''), `content ${JSON.stringify(got)}`);
    check(finish === 'stop', `finish ${finish}`);
    check(usage && usage.completion_tokens > 0, `usage ${JSON.stringify(usage)}`);
});

await tcase('stream withResponse headers', async () => {
    const text = '@fake stream:3 headers on stream';
    const { data: stream, response } = await client.chat.completions
        .create({ model: 'auto', messages: [{ role: 'user', content: text }], stream: true })
        .withResponse();
    check(response.status === 200, `status ${response.status}`);
    check((response.headers.get('content-type') || '').startsWith('text/event-stream'), 'content-type');
    checkHeaders(response.headers, null);
    let got = '';
    for await (const ch of stream) {
        const choice = ch.choices && ch.choices[0];
        if (choice && choice.delta && choice.delta.content) got += choice.delta.content;
    }
    check(got === deltas(text, 3).join(''), `content ${JSON.stringify(got)}`);
});

await tcase('mid-stream failure raises APIError', async () => {
    const stream = await client.chat.completions.create({
        model: 'cheap',
        messages: [{ role: 'user', content: '@fake cut node' }],
        stream: true,
    });
    let threw = null;
    try {
        for await (const ch of stream) void ch;
    } catch (e) {
        threw = e;
    }
    check(threw instanceof OpenAI.APIError, `want APIError from the in-band error event, got ${threw}`);
});

await tcase('unknown model -> NotFoundError', async () => {
    let threw = null;
    try {
        await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] });
    } catch (e) {
        threw = e;
    }
    check(threw instanceof OpenAI.NotFoundError, `got ${threw}`);
    check(threw.status === 404 && typeof threw.error?.message === 'string', `error ${JSON.stringify(threw.error)}`);
});

await tcase('models.list', async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    for (const want of ['auto', 'cheap', 'strong']) check(ids.includes(want), `${want} not in ${ids}`);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
