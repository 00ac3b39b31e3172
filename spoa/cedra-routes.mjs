#!/usr/bin/env node
// cedra-routes: turns a Next.js build's manifests (.next/) into the route
// table cedra-spoa loads to compute the Valkey keys Next.js reads.
//
//   cedra-routes [--scheme auto|pathname|route-cache] [--next-version X.Y.Z] [-o FILE] .next
//
// Next.js >= 16.3.8 (and 15.5.27 <= v < 16) keys an app page by
// /route-cache/APP_PAGE/<sha256 of its app page, e.g. "/[locale]/page">/$<pathname>;
// older versions by the pathname alone. "auto" reads the version from
// node_modules/next/package.json next to the .next directory.
// Runs with Node.js or Bun; no dependencies.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

function die(msg) {
  process.stderr.write(`cedra-routes: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const a = { scheme: "auto", version: null, out: null, dir: null };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === "--scheme") a.scheme = argv[++i];
    else if (v === "--next-version") a.version = argv[++i];
    else if (v === "-o") a.out = argv[++i];
    else if (v === "-h" || v === "--help") {
      process.stdout.write("usage: cedra-routes [--scheme auto|pathname|route-cache] [--next-version X.Y.Z] [-o FILE] DOT_NEXT_DIR\n");
      process.exit(0);
    } else if (!a.dir) a.dir = v;
    else die(`unexpected argument ${v}`);
  }
  if (!a.dir) die("missing the .next directory");
  if (!["auto", "pathname", "route-cache"].includes(a.scheme)) die(`bad --scheme ${a.scheme}`);
  return a;
}

function readJson(path) {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    die(`${path}: ${e.message}`);
  }
}

function nextVersion(dir) {
  for (let d = resolve(dir, ".."); ; d = dirname(d)) {
    const p = join(d, "node_modules", "next", "package.json");
    if (existsSync(p)) return readJson(p).version;
    if (dirname(d) === d) return null;
  }
}

function cmp(a, b) {
  const pa = a.split(/[.-]/).slice(0, 3).map(Number);
  const pb = b.split(/[.-]/).slice(0, 3).map(Number);
  for (let i = 0; i < 3; i++) if (pa[i] !== pb[i]) return pa[i] - pb[i];
  return 0;
}

// Which key scheme a Next.js version reads (DESIGN §3.2, checked against real builds).
function schemeFor(version) {
  const major = Number(version.split(".")[0]);
  if (major > 16) return "route-cache";
  if (major === 16) return cmp(version, "16.3.8") >= 0 ? "route-cache" : "pathname";
  if (major === 15) return cmp(version, "15.5.27") >= 0 ? "route-cache" : "pathname";
  return "pathname";
}

const args = parseArgs(process.argv.slice(2));
const dir = args.dir;
let scheme = args.scheme;
let version = args.version;
if (scheme === "auto") {
  version = version || nextVersion(dir);
  if (!version) die("cannot tell the Next.js version: pass --next-version or --scheme");
  scheme = schemeFor(version);
}
const buildId = existsSync(join(dir, "BUILD_ID")) ? readFileSync(join(dir, "BUILD_ID"), "utf8").trim() : "";
if (/\s/.test(buildId)) die("BUILD_ID holds blanks");

const lines = [
  `# cedra-spoa route table, made by cedra-routes from ${resolve(dir)}` +
    (version ? ` (Next.js ${version})` : ""),
  `scheme ${scheme}`,
];
if (buildId) lines.push(`build ${buildId}`);

if (scheme === "route-cache") {
  const appPaths = readJson(join(dir, "app-path-routes-manifest.json"));
  const routes = readJson(join(dir, "routes-manifest.json"));
  // route -> app page ("/[locale]/products/[slug]" -> "/[locale]/products/[slug]/page")
  const pageOf = new Map();
  for (const [page, route] of Object.entries(appPaths)) {
    if (page.endsWith("/page")) pageOf.set(route, page);
  }
  // Static routes first, then dynamic ones in Next.js's precedence order.
  const ordered = [...(routes.staticRoutes || []), ...(routes.dynamicRoutes || [])];
  let n = 0;
  for (const r of ordered) {
    const page = pageOf.get(r.page);
    if (!page) continue; // route handlers, pages router: not app pages
    // Next's own /_not-found and /_global-error are not URLs a user asks for:
    // unmatched paths get them with "private, no-store", never from a cache.
    if (r.page.startsWith("/_")) continue;
    if (!/^\/[^\s]*$/.test(r.page)) die(`unexpected route ${JSON.stringify(r.page)}`);
    const hash = createHash("sha256").update(page).digest("hex");
    lines.push(`route ${r.page} APP_PAGE ${hash} ${page}`);
    n++;
  }
  if (n === 0) die("no app pages found");
}

const text = lines.join("\n") + "\n";
if (args.out) writeFileSync(args.out, text);
else process.stdout.write(text);
