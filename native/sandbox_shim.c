// dedup-sandbox-shim: what Node cannot do for a sandbox (src/sandbox/): start a process tree in
// new PID, mount, UTS and IPC namespaces on a root filesystem it pivots into, or adopt a tree that
// CRIU restores, and be that tree's parent (this machine's PID 1 does not reap orphans). It joins
// the sandbox's cgroup first, so the whole tree, itself included, is frozen, killed and watched
// through that cgroup. Once the tree's root runs it prints "pid N" on stdout; when the root
// exits it writes "exited CODE" or "signaled SIG" to STATUS (written to STATUS.tmp, then renamed)
// and exits 0. Any failure before that is one "error ..." line on stdout and exit status 1.
//
//   dedup-sandbox-shim [-uinm] [-s SECCOMP] CGROUP STATUS run ROOTFS HOSTNAME CMD [ARG...]
//   dedup-sandbox-shim [-m] [-k DIR] CGROUP STATUS restore PIDFILE CRIU [ARG...]   (criu restore --restore-sibling)
//
// -u, -i, -n: new UTS, IPC, network namespaces (run; a restore recreates what was dumped).
// -m: opt the tree into KSM merging (prctl PR_SET_MEMORY_MERGE, inherited across fork and exec).
// -k DIR: criu's kernel probe cache lives in DIR, a directory on a tmpfs (see kdat_on_tmpfs).
// -s ERRNO:NAME[,NAME...]: a seccomp filter on the tree (run): the named system calls fail with
//    ERRNO, the rest are allowed; installed just before the exec. A restore gets the tree's
//    filters back from the checkpoint (criu dumps them).
//   dedup-sandbox-shim -s SECCOMP check   builds the filter without installing it: "ok" or "error ...".

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/close_range.h>
#include <seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("error ", stdout);
  vfprintf(stdout, fmt, ap);
  fputc('\n', stdout);
  va_end(ap);
  exit(1);
}

static void join_cgroup(const char* cgroup) {
  char path[4096];
  snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0", 1) != 1) fail("cannot join cgroup %s: %s", cgroup, strerror(errno));
  close(fd);
}

// In the child, before exec: errors go to the parent through `err` (a close-on-exec pipe).
static void child_fail(int err, const char* what) {
  char msg[512];
  int n = snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
  if (write(err, msg, (size_t)n) < 0) _exit(127);
  _exit(127);
}

static void make_node(int err, const char* path, unsigned maj, unsigned min) {
  if (mknod(path, S_IFCHR | 0666, makedev(maj, min)) != 0 && errno != EEXIST) child_fail(err, path);
}

// PID 1 of the new namespaces: a private mount tree whose root is ROOTFS (with its own /proc and a
// small /dev), nothing of the host's mounts left (CRIU dumps every mount the namespace holds).
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

static int ns_flags;
static scmp_filter_ctx seccomp_filter;

// The filter of a -s argument, or fail() naming what is wrong in it.
static scmp_filter_ctx build_seccomp(const char* spec) {
  char* names;
  long err = strtol(spec, &names, 10);
  if (*names != ':' || err <= 0 || err > 4095) fail("seccomp: \"%s\" is not ERRNO:NAME[,NAME...]", spec);
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) fail("seccomp: cannot create a filter");
  // Root in the sandbox may install it without no_new_privs; setuid programs there keep working.
  if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) != 0) fail("seccomp: cannot leave no_new_privs alone");
  char* list = strdup(names + 1);
  char* save = NULL;
  for (char* name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) fail("seccomp: unknown system call \"%s\"", name);
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO((unsigned)err), nr, 0);
    if (rc != 0) fail("seccomp: cannot deny %s: %s", name, strerror(-rc));
  }
  free(list);
  return ctx;
}

static void init_sandbox(int err, const char* rootfs, const char* hostname, char** argv) {
  // Its own session: CRIU dumps a tree only when its session leader is inside the namespace.
  if (setsid() < 0) child_fail(err, "setsid");
  // The mount namespace is the child's alone: pivot_root moves the root of every process in it.
  if (unshare(CLONE_NEWNS | ns_flags) != 0) child_fail(err, "unshare");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) child_fail(err, "make / private");
  if (chdir(rootfs) != 0) child_fail(err, rootfs);
  mkdir("proc", 0555);
  if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) child_fail(err, "mount /proc");
  mkdir("dev", 0755);
  if (mount("tmpfs", "dev", "tmpfs", MS_NOSUID, "mode=755,size=64k") != 0) child_fail(err, "mount /dev");
  make_node(err, "dev/null", 1, 3);
  make_node(err, "dev/zero", 1, 5);
  make_node(err, "dev/random", 1, 8);
  make_node(err, "dev/urandom", 1, 9);
  if (syscall(SYS_pivot_root, ".", ".") != 0) child_fail(err, "pivot_root");
  if (umount2(".", MNT_DETACH) != 0) child_fail(err, "detach the old root");
  if (chdir("/") != 0) child_fail(err, "chdir /");
  if ((ns_flags & CLONE_NEWUTS) && sethostname(hostname, strlen(hostname)) != 0) child_fail(err, "sethostname");
  int null = open("/dev/null", O_RDWR);
  if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) child_fail(err, "/dev/null");
  if (null > 2) close(null);
  // Nothing of the host's may stay open in the sandbox (CRIU could not dump it).
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) child_fail(err, "close_range");
  if (seccomp_filter) {
    int rc = seccomp_load(seccomp_filter);
    if (rc != 0) {
      errno = -rc;
      child_fail(err, "seccomp filter");
    }
  }
  execvp(argv[0], argv);
  child_fail(err, argv[0]);
}

static pid_t start_run(const char* rootfs, const char* hostname, char** argv) {
  if (unshare(CLONE_NEWPID) != 0) fail("unshare: %s", strerror(errno));
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) fail("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) fail("fork: %s", strerror(errno));
  if (pid == 0) {
    close(pipefd[0]);
    init_sandbox(pipefd[1], rootfs, hostname, argv);
  }
  close(pipefd[1]);
  char msg[512];
  ssize_t n = read(pipefd[0], msg, sizeof msg - 1);
  if (n > 0) {
    msg[n] = 0;
    waitpid(pid, NULL, 0);
    fail("sandbox did not start: %s", msg);
  }
  return pid;
}

// criu keeps what it probed of the kernel in /run/criu.kdat, but only where /run is a tmpfs;
// elsewhere (this machine) every restore probes again, ~100 ms with an `iptables -L` among it.
// criu gets its own mount namespace, a slave of ours (nothing propagates back), with DIR bound
// over /run. Best effort: criu probes as before when any step fails.
static void kdat_on_tmpfs(const char* dir) {
  if (!dir || unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) return;
  struct stat st;
  // Ours alone (/dev/shm is world-writable): criu trusts what the cache says.
  if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077)) return;
  // A criu killed while saving the cache leaves criu.kdat.tmp, and every later one skips saving
  // (it creates that file with O_EXCL): one older than a minute is such a leftover.
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s/criu.kdat.tmp", dir);
  if (lstat(tmp, &st) == 0 && time(NULL) - st.st_mtime > 60) unlink(tmp);
  if (mount(dir, "/run", NULL, MS_BIND, NULL) != 0) fprintf(stderr, "kdat cache %s not bound over /run: %s\n", dir, strerror(errno));
}

static pid_t start_restore(const char* pidfile, const char* kdat_dir, char** argv) {
  pid_t criu = fork();
  if (criu < 0) fail("fork: %s", strerror(errno));
  if (criu == 0) {
    dup2(2, 1);  // criu's output goes to our log, not to the pipe our caller reads
    kdat_on_tmpfs(kdat_dir);
    execv(argv[0], argv);
    _exit(127);
  }
  int status;
  if (waitpid(criu, &status, 0) < 0) fail("wait for criu: %s", strerror(errno));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("criu restore failed (status %d)", status);
  FILE* f = fopen(pidfile, "r");
  int pid = 0;
  if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) fail("criu restore left no pid in %s", pidfile);
  fclose(f);
  return pid;
}

static void write_status(const char* status_file, int status) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", status_file);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  if (WIFSIGNALED(status)) fprintf(f, "signaled %d\n", WTERMSIG(status));
  else fprintf(f, "exited %d\n", WEXITSTATUS(status));
  // No fsync: the status matters only while this boot lasts, and the exit handler waits on it.
  fclose(f);
  rename(tmp, status_file);
}

int main(int argc, char** argv) {
  int opt, merge = 0;
  const char* kdat_dir = NULL;
  while ((opt = getopt(argc, argv, "+uinmk:s:")) != -1) {
    if (opt == 'u') ns_flags |= CLONE_NEWUTS;
    else if (opt == 's') seccomp_filter = build_seccomp(optarg);
    else if (opt == 'k') kdat_dir = optarg;
    else if (opt == 'i') ns_flags |= CLONE_NEWIPC;
    else if (opt == 'n') ns_flags |= CLONE_NEWNET;
    else if (opt == 'm') merge = 1;
    else return 2;
  }
  argc -= optind - 1;
  argv += optind - 1;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 2 && strcmp(argv[1], "check") == 0) {
    puts(seccomp_filter ? "ok" : "error nothing to check (-s SECCOMP)");
    return seccomp_filter ? 0 : 1;
  }
  if (argc < 6 || (strcmp(argv[3], "run") != 0 && strcmp(argv[3], "restore") != 0) ||
      (strcmp(argv[3], "run") == 0 && argc < 7)) {
    fprintf(stderr, "usage: dedup-sandbox-shim [-uinm] [-s SECCOMP] CGROUP STATUS run ROOTFS HOSTNAME CMD [ARG...]\n"
                    "       dedup-sandbox-shim [-m] [-k DIR] CGROUP STATUS restore PIDFILE CRIU [ARG...]\n"
                    "       dedup-sandbox-shim -s SECCOMP check\n");
    return 2;
  }
  join_cgroup(argv[1]);
  if (merge && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) fail("prctl(PR_SET_MEMORY_MERGE): %s", strerror(errno));
  pid_t pid = strcmp(argv[3], "run") == 0 ? start_run(argv[4], argv[5], argv + 6) : start_restore(argv[4], kdat_dir, argv + 5);
  printf("pid %d\n", pid);
  fclose(stdout);
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  write_status(argv[2], status);
  return 0;
}
