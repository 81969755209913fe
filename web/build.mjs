// `npm run build:pages`: bundles the pages `folio serve` embeds into dist/
// (committed, so `cargo build` needs no Node). The output depends only on
// the sources and the pinned package versions, so CI can rebuild it and
// fail on any difference. Prints each asset's raw and gzip size.

import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'

import * as esbuild from 'esbuild'

const root = path.dirname(fileURLToPath(import.meta.url))
const dist = path.join(root, 'dist')
rmSync(dist, { recursive: true, force: true })
mkdirSync(path.join(dist, 'assets'), { recursive: true })

await esbuild.build({
  absWorkingDir: root,
  entryPoints: {
    editor: 'pages/editor.ts',
    watch: 'pages/watch.ts',
    replay: 'pages/replay.ts',
    style: 'pages/style.css'
  },
  outdir: 'dist/assets',
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  charset: 'utf8',
  legalComments: 'eof',
  logLevel: 'warning'
})

for (const page of ['index.html', 'watch.html', 'replay.html']) {
  copyFileSync(path.join(root, 'pages', page), path.join(dist, page))
}

const rows = []
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const file = path.join(dir, name)
    if (statSync(file).isDirectory()) walk(file)
    else {
      const bytes = readFileSync(file)
      rows.push([path.relative(dist, file), bytes.length, gzipSync(bytes, { level: 9 }).length])
    }
  }
}
walk(dist)
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`
console.log('| asset | raw | gzip |\n| --- | ---: | ---: |')
for (const [name, raw, gz] of rows) console.log(`| ${name} | ${kib(raw)} | ${kib(gz)} |`)
