// JSON from outside (registries, layouts, trace files) checked against a zod schema; the error,
// built by the caller's typed error class, names the first failing path.

import type { z } from 'zod';

export function parseValidatedJson<T>(schema: z.ZodType<T>, text: string, fail: (why: string) => Error): T {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw fail(`not valid JSON (${(err as Error).message})`);
  }
  const r = schema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw fail(`${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return r.data;
}
