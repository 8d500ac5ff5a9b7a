// The configuration of a sandbox pool (the seed's PoolConfig, SandboxTemplate and
// RecoveryStrategy) as zod schemas with defaults and ranges, and the states a pooled sandbox
// moves through. Everything the pool and the recovery manager receive has been validated here.

import { z } from 'zod';
import { FailedPreconditionError, InvalidConfigError } from '../errors.js';

const name = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/, 'must be 1-63 of a-z 0-9 _ . - starting with a letter or digit');
const cgroupFile = z.string().regex(/^[a-z]+\.[A-Za-z0-9_.]+$/, 'must be a cgroup v2 interface file such as pids.max or hugetlb.2MB.max');

export const sandboxTemplateSchema = z.object({
  /** The image whose top layer's chain id names the committed snapshot the rootfs is prepared from. */
  image: z.string().min(1),
  /** argv of the sandbox's first process (PID 1 of its namespaces). */
  command: z.array(z.string()).min(1, 'needs at least the program to run'),
  env: z.record(z.string()).default({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }),
  /** Defaults to the sandbox id. */
  hostname: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/, 'must be a host name').optional(),
  namespaces: z.object({
    pid: z.literal(true, { errorMap: () => ({ message: 'a sandbox always has its own PID namespace (restores need its PIDs free)' }) }).default(true),
    mount: z.literal(true, { errorMap: () => ({ message: 'a sandbox always has its own mount namespace (its root is a snapshot)' }) }).default(true),
    uts: z.boolean().default(true),
    ipc: z.boolean().default(true),
    network: z.boolean().default(false),
  }).strict().default({}),
  /** cgroup v2 interface files written when a sandbox's cgroup is created, e.g. {"pids.max": "64"}. */
  cgroup: z.object({ limits: z.record(cgroupFile, z.string()).default({}) }).strict().default({}),
  /** The sandbox counts as ready (and is frozen) once this file exists in its root filesystem. */
  ready: z.object({
    file: z.string().regex(/^\/[^\0]*$/, 'must be an absolute path inside the sandbox').refine((p) => !p.split('/').includes('..'), 'must not contain ..'),
    timeout_ms: z.number().int().min(1).max(600_000).default(30_000),
  }).strict().optional(),
  /**
   * A seccomp filter installed on the tree before its command runs: the `deny` system calls fail
   * with `errno`, every other one is allowed (names are checked against this machine's libseccomp
   * when the pool starts). A restored tree gets its filter back from the checkpoint.
   */
  seccomp: z.object({
    deny: z.array(z.string().regex(/^[a-z_][a-z0-9_]*$/, 'must be system call names such as mount'))
      .min(1, 'needs at least one system call').max(500)
      .refine((names) => new Set(names).size === names.length, 'names a system call twice'),
    errno: z.enum(['EPERM', 'EACCES', 'ENOSYS']).default('EPERM'),
  }).strict().optional(),
}).strict();
export type SandboxTemplate = z.infer<typeof sandboxTemplateSchema>;

export const poolConfigSchema = z.object({
  name,
  min_size: z.number().int().min(0).max(1000).default(1),
  max_size: z.number().int().min(1).max(1000).default(4),
  /** Defaults to min_size. */
  initial_size: z.number().int().min(0).max(1000).optional(),
  refill_interval_ms: z.number().int().min(10).max(3_600_000).default(1000),
  refill_batch_size: z.number().int().min(1).max(100).default(2),
  acquire_timeout_ms: z.number().int().min(0).max(600_000).default(5000),
  /** Start sandboxes by restoring this checkpoint (a base checkpoint) instead of running the command. */
  base_checkpoint: z.string().optional(),
  /** At start, run one sandbox until ready, checkpoint it as the base, and restore every sandbox from it. */
  from_checkpoint: z.boolean().default(false),
  template: sandboxTemplateSchema,
}).strict();
export type PoolConfigInput = z.input<typeof poolConfigSchema>;
export type PoolConfig = Omit<z.infer<typeof poolConfigSchema>, 'initial_size'> & { initial_size: number };

export const recoveryStrategySchema = z.object({
  max_retries: z.number().int().min(0).max(100).default(3),
  retry_interval_ms: z.number().int().min(0).max(60_000).default(100),
  /** latest: the sandbox's newest valid checkpoint; nearest: that, else the base it was restored from. */
  snapshot_selector: z.enum(['latest', 'nearest']).default('latest'),
  health_timeout_ms: z.number().int().min(1).max(60_000).default(2000),
}).strict();
export type RecoveryStrategy = z.infer<typeof recoveryStrategySchema>;

function issueMessage(where: string, err: z.ZodError): string {
  const issue = err.issues[0]!;
  return `${where}: ${issue.path.join('.') || '(root)'}: ${issue.message}`;
}

/** Validates a pool's configuration: ranges, min ≤ max, initial ≤ max, a template it can run. */
export function parsePoolConfig(input: unknown): PoolConfig {
  const r = poolConfigSchema.safeParse(input);
  if (!r.success) throw new InvalidConfigError(issueMessage('pool config', r.error));
  const c = r.data;
  const where = `pool ${c.name}`;
  if (c.min_size > c.max_size) throw new InvalidConfigError(`${where}: min_size ${c.min_size} is above max_size ${c.max_size}`);
  const initial = c.initial_size ?? c.min_size;
  if (initial > c.max_size) throw new InvalidConfigError(`${where}: initial_size ${initial} is above max_size ${c.max_size}`);
  if (c.from_checkpoint && c.base_checkpoint) throw new InvalidConfigError(`${where}: from_checkpoint and base_checkpoint exclude each other`);
  return { ...c, initial_size: initial };
}

export function defaultPoolConfig(name: string, template: z.input<typeof sandboxTemplateSchema>): PoolConfig {
  return parsePoolConfig({ name, template });
}

export function parseRecoveryStrategy(input: unknown = {}): RecoveryStrategy {
  const r = recoveryStrategySchema.safeParse(input);
  if (!r.success) throw new InvalidConfigError(issueMessage('recovery strategy', r.error));
  return r.data;
}

/** The cgroup controllers the template's limits use (pids for pids.max, …). */
export function limitControllers(template: SandboxTemplate): string[] {
  return [...new Set(Object.keys(template.cgroup.limits).map((f) => f.slice(0, f.indexOf('.'))).filter((c) => c !== 'cgroup'))];
}

const ERRNO = { EPERM: 1, EACCES: 13, ENOSYS: 38 } as const;

/** The template's seccomp filter as the sandbox shim takes it: "-s ERRNO:NAME,NAME,...". */
export function seccompArg(seccomp: NonNullable<SandboxTemplate['seccomp']>): string {
  return `${ERRNO[seccomp.errno]}:${seccomp.deny.join(',')}`;
}

/**
 * Starting: being created or restored for the pool. Frozen: in the pool. Active: handed out.
 * Failed: exited abnormally, not (yet) recovered. Destroyed: gone, nothing of it left.
 */
export type PooledState = 'starting' | 'frozen' | 'active' | 'failed' | 'destroyed';

const TRANSITIONS: Record<PooledState, PooledState[]> = {
  starting: ['frozen', 'destroyed'],
  frozen: ['active', 'destroyed'],
  active: ['frozen', 'failed', 'destroyed'],
  failed: ['active', 'destroyed'],
  destroyed: [],
};

export function canTransition(from: PooledState, to: PooledState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: PooledState, to: PooledState): void {
  if (!canTransition(from, to)) throw new FailedPreconditionError(`sandbox ${id} is ${from}; cannot become ${to}`);
}
