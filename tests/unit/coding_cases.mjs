#!/usr/bin/env node
// Generates the table of tests/unit/test_coding.c: Accept-Encoding values and
// the content-coding Next.js's compression middleware answers them with.
//
//   node tests/unit/coding_cases.mjs [--update] [path/to/compression/index.js ...]
//
// The expectation comes from negotiator's lib/encoding.js and the middleware's
// choice, transcribed below as they are in next/dist/compiled/compression.
// Every case is then sent to the real middleware of each bundle given (by
// default those of the storefront fixture's installs) through node:http on
// loopback, and any disagreement aborts. --update rewrites the table between
// the markers in test_coding.c; without it the table goes to stdout.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync, readdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';

const here = dirname(fileURLToPath(import.meta.url));
const top = join(here, '..', '..');

// ---- negotiator/lib/encoding.js, verbatim apart from layout ----------------
var simpleEncodingRegExp = /^\s*([^\s;]+)\s*(?:;(.*))?$/;
function parseAcceptEncoding(accept) {
  var accepts = accept.split(',');
  var hasIdentity = false;
  var minQuality = 1;
  for (var i = 0, j = 0; i < accepts.length; i++) {
    var encoding = parseEncoding(accepts[i].trim(), i);
    if (encoding) {
      accepts[j++] = encoding;
      hasIdentity = hasIdentity || specify('identity', encoding);
      minQuality = Math.min(minQuality, encoding.q || 1);
    }
  }
  if (!hasIdentity) {
    accepts[j++] = { encoding: 'identity', q: minQuality, i: i };
  }
  accepts.length = j;
  return accepts;
}
function parseEncoding(str, i) {
  var match = simpleEncodingRegExp.exec(str);
  if (!match) return null;
  var encoding = match[1];
  var q = 1;
  if (match[2]) {
    var params = match[2].split(';');
    for (var j = 0; j < params.length; j++) {
      var p = params[j].trim().split('=');
      if (p[0] === 'q') { q = parseFloat(p[1]); break; }
    }
  }
  return { encoding: encoding, q: q, i: i };
}
function getEncodingPriority(encoding, accepted, index) {
  var priority = { o: -1, q: 0, s: 0 };
  for (var i = 0; i < accepted.length; i++) {
    var spec = specify(encoding, accepted[i], index);
    if (spec && (priority.s - spec.s || priority.q - spec.q || priority.o - spec.o) < 0) {
      priority = spec;
    }
  }
  return priority;
}
function specify(encoding, spec, index) {
  var s = 0;
  if (spec.encoding.toLowerCase() === encoding.toLowerCase()) { s |= 1; }
  else if (spec.encoding !== '*') { return null; }
  return { i: index, o: spec.i, q: spec.q, s: s };
}
function preferredEncodings(accept, provided) {
  var accepts = parseAcceptEncoding(accept || '');
  var priorities = provided.map(function getPriority(type, index) {
    return getEncodingPriority(type, accepts, index);
  });
  return priorities.filter(isQuality).sort(compareSpecs).map(function getEncoding(priority) {
    return provided[priorities.indexOf(priority)];
  });
}
function compareSpecs(a, b) { return (b.q - a.q) || (b.s - a.s) || (a.o - b.o) || (a.i - b.i) || 0; }
function isQuality(spec) { return spec.q > 0; }

// ---- the compression middleware's choice -----------------------------------
function encoding(header, available) { return preferredEncodings(header, available)[0]; }
function choose(header) { // header: a latin1 string, or undefined when absent
  var u = encoding(header, ['gzip', 'deflate', 'identity']);
  if (u === 'deflate' && encoding(header, ['gzip'])) u = encoding(header, ['gzip', 'identity']);
  return !u || u === 'identity' ? 'identity' : u;
}

// ---- cases ------------------------------------------------------------------
const hand = [
  '', ' ', ',', ',,,', ' , , ', 'gzip', 'deflate', 'identity', '*', 'br', 'zstd',
  'x-gzip', 'compress', 'GZIP', 'Gzip', 'DEFLATE', 'IDENTITY', 'gZiP, deflate',
  // browsers and HTTP libraries
  'gzip, deflate, br, zstd', 'gzip, deflate, br', 'gzip, deflate', 'deflate, gzip',
  'gzip,deflate', 'br;q=1.0, gzip;q=0.8, *;q=0.1', 'gzip;q=1.0, identity; q=0.5, *;q=0',
  'identity', 'gzip, compress, br', 'br, gzip', 'deflate, gzip, br, zstd', 'gzip, br',
  // q=0 and "*"
  'gzip;q=0', 'gzip;q=0, deflate', 'gzip;q=0, deflate;q=0', 'gzip;q=0, *', '*;q=0',
  '*;q=0, gzip', '*;q=0, deflate', '*;q=0, identity', 'identity;q=0', 'identity;q=0, gzip',
  'identity;q=0, br', 'identity;q=0, *;q=0', '*, identity;q=0', '*, gzip;q=0', '*;q=0.5',
  'gzip;q=0.5, *', 'deflate;q=0.5, *', '*, deflate', 'deflate, *', '*;q=0.5, deflate',
  '*;q=0, identity;q=0', 'gzip;q=0, identity;q=0', 'gzip, gzip;q=0', 'gzip;q=0, gzip',
  'gzip;q=0.5, gzip;q=0.4', 'gzip;q=0.4, gzip;q=0.5', 'gzip;q=0.5, GZIP;q=0.5, identity',
  // identity against the others
  'gzip;q=0.5, identity', 'identity, gzip;q=0.5', 'identity, gzip', 'gzip, identity',
  'identity;q=0.5, gzip;q=0.5', 'gzip;q=0.5, identity;q=0.5', 'identity;q=0.9, gzip;q=1',
  'br;q=0.5, gzip', 'br;q=0.1, gzip;q=0.2', 'gzip;q=0.2, br;q=0.1', 'br;q=0.001, gzip;q=0.5',
  // deflate: only when gzip is unacceptable
  'deflate', 'deflate, gzip;q=0.001', 'deflate;q=1, gzip;q=0.5', 'deflate, identity',
  'deflate;q=0.5, identity', 'identity, deflate', 'deflate, gzip;q=0', 'deflate, *;q=0',
  'deflate, identity, gzip;q=0.5', 'deflate, identity;q=0.9, gzip;q=0.5', 'deflate, *',
  'deflate;q=0.5, gzip;q=0.5', 'gzip;q=0.5, deflate;q=0.5', 'deflate;q=0.001, br',
  'deflate;q=0.1, identity;q=0.1', 'identity;q=0.1, deflate;q=0.1', 'deflate, x-gzip',
  // parameters and their oddities
  'gzip;q=abc', 'gzip;q=', 'gzip;q', 'gzip;q=abc, identity', 'gzip;q=abc, deflate',
  'gzip;q=abc, *', '*;q=abc, gzip', 'gzip; q=0', 'gzip;q=0 ', 'gzip ;q=0', 'gzip ; q=0',
  'gzip;Q=0', 'gzip;q =0', 'gzip;q= 0', 'gzip;q=\t0', 'gzip;q=0;q=1', 'gzip;level=1;q=0',
  'gzip;q=0;level=1', 'gzip;;q=0', 'gzip;', 'gzip;;', 'gzip; ', 'gzip;q=0=1',
  'gzip;q=1=0', 'gzip;q==0', 'gzip;x=1', 'gzip;q=0,', 'gzip deflate', 'gzip deflate;q=0',
  ';q=0', ';gzip', 'gzip;q=0;', 'gzip ; ', '; q=1', 'gzip,;q=0',
  // numbers as parseFloat reads them
  'gzip;q=1e-3', 'gzip;q=1e-3, identity;q=0.002', 'gzip;q=-1', 'gzip;q=-1, identity',
  'gzip;q=-1, *', 'gzip;q=Infinity', 'gzip;q=Infinity, identity;q=Infinity',
  'identity;q=Infinity, gzip;q=Infinity', 'gzip;q=-Infinity', 'gzip;q=+Infinity',
  'gzip;q=infinity', 'gzip;q=Inf', 'gzip;q=NaN', 'gzip;q=0x1', 'gzip;q=0x1, identity;q=0.5',
  'gzip;q=.5', 'gzip;q=.5, identity;q=0.6', 'gzip;q=5.', 'gzip;q=+0.5', 'gzip;q=-0',
  'gzip;q=-0, identity', 'gzip;q=0.5x', 'gzip;q=0.5 x', 'gzip;q=1e', 'gzip;q=1e+',
  'gzip;q=1E2', 'gzip;q=.', 'gzip;q=-', 'gzip;q=+', 'gzip;q=.e1', 'gzip;q=0.0000',
  'gzip;q=0.001', 'gzip;q=2', 'gzip;q=1e400', 'gzip;q=1e-400', 'gzip;q=1e-400, identity',
  'gzip;q=1_0', 'gzip;q=0b1', 'gzip;q=00.5', 'gzip;q=1e999999999999, identity;q=Infinity',
  'identity;q=1e999999999999, gzip;q=Infinity', 'gzip;q=1e-999999999999',
  'gzip;q=0.1, identity;q=0.1000000000000000000001',
  'gzip;q=0.1, identity;q=0.10000000000000001', 'gzip;q=1, identity;q=1.0000000000000001',
  'gzip;q=1, identity;q=1.0000000000000003', 'identity;q=0.3, gzip;q=0.30000000000000004',
  'gzip;q=0.30000000000000004, identity;q=0.3', 'gzip;q=0.5, identity;q=0.6e0',
  'gzip;q=5e-1, identity;q=0.5', 'identity;q=0.05e1, gzip;q=0.5',
  'gzip;q=0.5, identity;q=0.5' + '0'.repeat(900) + '1',
  'gzip;q=1, identity;q=1.00000000000000011102230246251565404236316680908203125',
  'gzip;q=1, identity;q=1.00000000000000011102230246251565404236316680908203125' +
    '0'.repeat(900) + '1',
  'gzip;q=1, identity;q=1.00000000000000011102230246251565404236316680908203124' +
    '9'.repeat(900),
  'gzip;q=1, identity;q=' + '0'.repeat(900) + '1.0000000000000003',
  'gzip;q=0.1, identity;q=' + '1' + '0'.repeat(1000) + 'e-1001',
  'gzip;q=0.5, identity;q=0.' + '0'.repeat(600) + '5e600',
  'gzip;q=4.9406564584124654e-324, identity;q=2.4703282292062328e-324',
  'gzip;q=4.9406564584124654e-324, identity;q=2.4703282292062327e-324',
  'gzip;q=1.7976931348623157e308, identity;q=1.7976931348623159e308',
  // whitespace as JavaScript sees it in a latin1 string
  ' gzip ', '\tgzip\t', 'gzip\t;q=0', 'gzip;q=0\t', '\u00a0gzip\u00a0', 'gzip\u00a0;q=0',
  'gzip\u00a0deflate', 'gzip;q=\u00a00', 'gzip;\u00a0q=0', '\u000bgzip', 'gzip\u000c;q=0',
  'gzip\r', 'gzip;q=0\r', 'gzip;q=0\rx', 'gzip;q=0\nx, deflate', 'gzip;x=\r;q=0',
  'gzip;x=\ry', 'gzip;x=\ny', 'gzip;q=1\r1', 'identity;q=0\r1, gzip;q=0.5',
  'gzip;\u0085q=0', '\u0085gzip', 'gzip\u0000', 'gzip;q=0\u0000', '\u00a0,gzip;q=0',
  'gzip\u00a0', 'gzip;q=0.5\u00a0, identity;q=0.6',
  // empty pieces and other junk
  ',,gzip,', ',gzip;q=0,,*', 'gzip,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,',
  'g zip', 'gzip\u00e9', 'gzi\u00f0', '\u00c7ZIP', 'gzip/1', '"gzip"', 'gzip=1', 'gzip,q=0',
  'x-gzip, gzip;q=0', 'gzip;q=0, x-gzip', 'compress, deflate;q=0.5, br;q=0.9',
];

// A deterministic fuzzer: elements drawn from a small grammar of the above.
function rng(seed) {
  return function () {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20240611);
const pick = (a) => a[Math.floor(rand() * a.length)];
const names = ['gzip', 'gzip', 'gzip', 'GZIP', 'deflate', 'deflate', 'Deflate', 'identity',
  'identity', 'IDENTITY', '*', '*', 'br', 'zstd', 'x-gzip', 'compress', '', 'gzip deflate'];
const qs = ['0', '1', '0.5', '0.5', '0.1', '0.9', '0.001', '0.000', '1.0', '1e-3', '-1', '.5',
  'Infinity', 'abc', '', '0x1', '2', '-0', '0.50', ' 0.5', '0.5x', 'NaN', '0.1000000000000000001'];
const ws = ['', '', '', ' ', ' ', '\t', '\u00a0'];
function element() {
  let e = pick(ws) + pick(names) + pick(ws);
  const r = rand();
  if (r < 0.55) e += ';' + pick(['', '', ' ']) + pick(['q', 'q', 'q', 'q', 'Q', 'level']) + '=' +
    pick(qs);
  else if (r < 0.6) e += ';' + pick(['', 'q', 'x=1;q=0', 'q=0;q=1', ';q=0.2']);
  return e + pick(ws);
}
const fuzz = [];
for (let n = 0; n < 400; n++) {
  const k = 1 + Math.floor(rand() * 5);
  const parts = [];
  for (let i = 0; i < k; i++) parts.push(element());
  fuzz.push(parts.join(pick([',', ',', ', ', ' ,'])));
}

const seen = new Set();
const cases = [];
for (const h of [...hand, ...fuzz]) {
  if (seen.has(h)) continue;
  seen.add(h);
  if (/[^\u0000-\u00ff]/.test(h)) throw new Error('not latin1: ' + JSON.stringify(h));
  if (h.length > 4096 || h.split(',').length > 64) throw new Error('over bounds: ' + h);
  cases.push({ header: h, want: choose(h) });
}
if (choose(undefined) !== 'identity') throw new Error('absent header');

// ---- cross-check against the real middleware ---------------------------------
let modules = process.argv.slice(2).filter((a) => !a.startsWith('--'));
if (modules.length === 0) {
  const work = join(top, 'tests/fixtures/storefront/.work');
  if (existsSync(work))
    for (const v of readdirSync(work)) {
      const m = join(work, v, 'deps/node_modules/next/dist/compiled/compression/index.js');
      if (existsSync(m)) modules.push(m);
    }
}
if (modules.length === 0) {
  console.error('no compression/index.js to check against (tests/fixtures/storefront/setup.sh)');
  process.exit(1);
}

const body = '<!doctype html><p>' + 'cedra '.repeat(400) + '</p>\n';

async function checkModule(path) {
  const compression = createRequire(import.meta.url)(path);
  const mw = compression();
  const server = http.createServer((req, res) => {
    // Values node:http cannot carry (control bytes) are handed over in base64
    // and put where the parser would have: negotiator only reads req.headers.
    const b64 = req.headers['x-ae-b64'];
    if (b64 === 'absent') delete req.headers['accept-encoding'];
    else if (b64 !== undefined) req.headers['accept-encoding'] = Buffer.from(b64, 'base64').toString('latin1');
    const got = req.headers['accept-encoding'];
    mw(req, res, () => {
      res.setHeader('Content-Type', 'text/html; charset=utf-8');
      res.setHeader('X-Seen', got === undefined ? 'absent' : Buffer.from(got, 'latin1').toString('base64'));
      res.end(body);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const ask = (headers) => new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', headers, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ ce: res.headers['content-encoding'] || 'identity', seen: res.headers['x-seen'] }));
    });
    req.on('error', reject);
  });
  const b64 = (s) => Buffer.from(s, 'latin1').toString('base64');
  const bad = [];
  const jobs = [];
  jobs.push(ask({}).then((r) => { if (r.ce !== 'identity') bad.push(['(absent)', 'identity', r.ce]); }));
  jobs.push(ask({ 'x-ae-b64': 'absent' }).then((r) => { if (r.ce !== 'identity') bad.push(['(absent)', 'identity', r.ce]); }));
  for (const c of cases) {
    jobs.push(ask({ 'x-ae-b64': b64(c.header) }).then((r) => {
      if (r.seen !== b64(c.header)) bad.push([c.header, 'header as sent', Buffer.from(r.seen, 'base64').toString('latin1')]);
      else if (r.ce !== c.want) bad.push([c.header, c.want, r.ce]);
    }));
    // As a real header too when node:http can send it; the server's parser
    // strips surrounding spaces and tabs, which trim() would anyway.
    if (/^[\t\x20-\x7e\x80-\xff]*$/.test(c.header))
      jobs.push(ask({ 'Accept-Encoding': c.header }).then((r) => {
        const sent = c.header.replace(/^[ \t]+|[ \t]+$/g, '');
        if (r.seen !== b64(sent)) bad.push([c.header, 'header as sent', Buffer.from(r.seen, 'base64').toString('latin1')]);
        else if (r.ce !== c.want) bad.push([c.header, c.want, r.ce]);
      }));
  }
  await Promise.all(jobs);
  agent.destroy();
  server.close();
  return { path, requests: jobs.length, bad };
}

let failed = false;
for (const m of modules) {
  const r = await checkModule(m);
  console.error(`${r.path}: ${r.requests} requests, ${r.bad.length} disagreements`);
  for (const [h, want, got] of r.bad.slice(0, 20))
    console.error(`  ${JSON.stringify(h)}: transcription ${want}, middleware ${got}`);
  failed ||= r.bad.length > 0;
}
if (failed) process.exit(1);

// ---- the C table -----------------------------------------------------------------
function cString(s) {
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (c >= 0x20 && c < 0x7f && ch !== '"' && ch !== '\\' && ch !== '?') out += ch;
    else out += '\\' + c.toString(8).padStart(3, '0');
  }
  return out;
}
function cLiteral(s, indent) {
  // Cut long values into adjacent literals, never inside an escape.
  const e = cString(s);
  const chunks = [];
  let cur = '';
  for (let i = 0; i < e.length;) {
    const n = e[i] === '\\' ? 4 : 1;
    if (cur.length + n > 72) { chunks.push(cur); cur = ''; }
    cur += e.slice(i, i + n);
    i += n;
  }
  chunks.push(cur);
  return chunks.map((c) => '"' + c + '"').join('\n' + indent);
}
const W = { identity: 'IDENTITY', gzip: 'GZIP', deflate: 'DEFLATE' };
const lines = cases.map((c) => `    C(${cLiteral(c.header, '      ')}, ${W[c.want]}),`);
const table = [
  `/* Generated by coding_cases.mjs: ${cases.length} cases (${hand.length} by hand), checked against`,
  ` * ${modules.length} real middleware bundle(s). */`,
  '/* clang-format off */',
  'static const struct ae_case cases[] = {',
  ...lines,
  '};',
  '/* clang-format on */',
].join('\n');

const counts = {};
for (const c of cases) counts[c.want] = (counts[c.want] || 0) + 1;
console.error(`${cases.length} cases: ${JSON.stringify(counts)}`);

if (process.argv.includes('--update')) {
  const f = join(here, 'test_coding.c');
  const src = readFileSync(f, 'utf8');
  const begin = '/* BEGIN coding_cases.mjs */\n', end = '/* END coding_cases.mjs */';
  const a = src.indexOf(begin), b = src.indexOf(end);
  if (a < 0 || b < a) throw new Error('markers not found in ' + f);
  writeFileSync(f, src.slice(0, a + begin.length) + table + '\n' + src.slice(b));
} else {
  console.log(table);
}
