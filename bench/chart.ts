// Horizontal grouped bar charts as standalone SVG: one group per comparison, one bar per series
// (ours, the baseline), the median as the bar and min–max as a whisker. No dependencies: the
// report must regenerate on a bare machine.

export interface Bar {
  series: string;
  median: number;
  min?: number;
  max?: number;
}

export interface BarGroup {
  label: string;
  bars: Bar[];
}

export interface Chart {
  title: string;
  /** Axis caption, e.g. "seconds (lower is better)". */
  unit: string;
  groups: BarGroup[];
  format: (v: number) => string;
}

const COLOURS = ['#2b6cb0', '#a0aec0', '#38a169', '#dd6b20', '#805ad5'];
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function barChartSvg(c: Chart): string {
  const series = [...new Set(c.groups.flatMap((g) => g.bars.map((b) => b.series)))];
  const labelW = 360;
  const plotW = 460;
  const barH = 16;
  const top = 56;
  const max = Math.max(...c.groups.flatMap((g) => g.bars.map((b) => Math.max(b.median, b.max ?? 0)))) || 1;
  const x = (v: number): number => labelW + (v / max) * plotW;
  const out: string[] = [];
  let y = top;
  for (const g of c.groups) {
    out.push(`<text x="${labelW - 10}" y="${y + 12}" text-anchor="end" font-weight="bold">${esc(g.label)}</text>`);
    for (const b of g.bars) {
      const colour = COLOURS[series.indexOf(b.series) % COLOURS.length];
      out.push(`<text x="${labelW - 10}" y="${y + barH * 2 - 4}" text-anchor="end" fill="#4a5568">${esc(b.series)}</text>`);
      out.push(`<rect x="${labelW}" y="${y + barH + 2}" width="${Math.max(1, x(b.median) - labelW).toFixed(1)}" height="${barH - 2}" fill="${colour}"/>`);
      if (b.min !== undefined && b.max !== undefined && b.max > b.min) {
        const wy = y + barH * 1.5 + 1;
        out.push(`<path d="M${x(b.min).toFixed(1)} ${wy}H${x(b.max).toFixed(1)}M${x(b.min).toFixed(1)} ${wy - 4}v8M${x(b.max).toFixed(1)} ${wy - 4}v8" stroke="#1a202c" fill="none"/>`);
      }
      out.push(`<text x="${(Math.max(x(b.median), x(b.max ?? 0)) + 6).toFixed(1)}" y="${y + barH * 2 - 4}">${esc(c.format(b.median))}</text>`);
      y += barH;
    }
    y += barH * 2;
  }
  const height = y + 30;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + plotW + 120}" height="${height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">${esc(c.title)}</text>
<text x="10" y="40" fill="#4a5568">${esc(c.unit)}; bar: median, whisker: min–max</text>
<line x1="${labelW}" y1="${top - 4}" x2="${labelW}" y2="${y}" stroke="#718096"/>
${out.join('\n')}
</svg>
`;
}
