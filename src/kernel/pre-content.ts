// A fanotify pre-content group (Linux 6.14 and later): a FAN_PRE_ACCESS mark on a blob file makes
// every read of a range of it wait in the kernel until the group answers, the event naming the
// range. A read through a file-backed EROFS mount whose chunk indexes point into the blob raises
// it too, in the reader's context. What the kernel does when the group's last holder goes (it
// allows everything pending, and the marks go with it: holes then read as zeros) is measured in
// test/pre-content.test.ts and written up in docs/kernel.md ("Lazy layers on EROFS: what the
// kernel does"); the rules that follow from it are on the methods below.

import { closeSync, constants } from 'node:fs';
import { UnsupportedError } from '../errors.js';
import { isSysError, native, type FanotifyEvent, type FanotifyReader } from '../native.js';

const FAN_CLOEXEC = 0x1;
const FAN_NONBLOCK = 0x2;
const FAN_CLASS_PRE_CONTENT = 0x8;
const FAN_UNLIMITED_MARKS = 0x20;
const FAN_MARK_ADD = 0x1;
const FAN_MARK_REMOVE = 0x2;
const FAN_MARK_IGNORED_MASK = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY = 0x40;
export const FAN_PRE_ACCESS = 0x0010_0000;
/** A directory's mark covers the files in it. */
const FAN_EVENT_ON_CHILD = 0x0800_0000;
const O_LARGEFILE = 0o100000;
const EIO = 5;

/** A range of the marked file some process waits to read; `fd` is the group's descriptor of the file (read-write, no events). */
export type PreContentRange = Pick<FanotifyEvent, 'fd' | 'pid' | 'offset' | 'count'>;

export class PreContentGroup {
  private reader: FanotifyReader | undefined;
  private ended: Promise<void> | undefined;
  /** close() has closed `fd`: its number may be another file's by now, so nothing is written to it. */
  private closed = false;

  /** The group behind descriptor `fd` (open()'s, or one another process held: the same marks, queue and pending events). */
  constructor(readonly fd: number) {}

  /**
   * A new group whose event descriptors are opened read-write, so the listener fills the range
   * through them (a descriptor the kernel opens for an event raises no events itself).
   */
  static open(): PreContentGroup {
    // Unlimited marks (root): each complete file of a marked directory gets an ignore mark of its own (ignore()).
    const fd = native().fanotifyInit(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_MARKS, constants.O_RDWR | O_LARGEFILE);
    if (isSysError(fd)) throw new UnsupportedError(`fanotify pre-content group: ${fd.call}: ${fd.message}`);
    return new PreContentGroup(fd);
  }

  /**
   * Marks `path` for pre-content events. Must come before the file is opened by whoever reads it
   * (the EROFS mount that names it as a device): a file opened while no pre-content mark exists
   * on its filesystem never raises one, and its holes read as zeros.
   */
  mark(path: string): void {
    const r = native().fanotifyMark(this.fd, FAN_MARK_ADD, FAN_PRE_ACCESS, path);
    if (isSysError(r)) throw new UnsupportedError(`fanotify mark on ${path}: ${r.call}: ${r.message}`);
  }

  /** Marks every file in directory `dir` (FAN_EVENT_ON_CHILD), with the same rule as mark(). */
  markChildren(dir: string): void {
    const r = native().fanotifyMark(this.fd, FAN_MARK_ADD, FAN_PRE_ACCESS | FAN_EVENT_ON_CHILD, dir);
    if (isSysError(r)) throw new UnsupportedError(`fanotify mark on ${dir}: ${r.call}: ${r.message}`);
  }

  /**
   * Reads of `path` raise no more events in this group (an ignore mask that survives writes): for
   * a file that is complete, whose every read would otherwise still cost a round trip here.
   * False when the kernel refused it (the events then go on coming, and are answered as before).
   */
  ignore(path: string): boolean {
    if (this.closed) return false;
    return native().fanotifyMark(this.fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_PRE_ACCESS, path) === true;
  }

  /** Removes markChildren's mark: reads of files in `dir` are no longer held. */
  unmarkChildren(dir: string): void {
    const r = native().fanotifyMark(this.fd, FAN_MARK_REMOVE, FAN_PRE_ACCESS | FAN_EVENT_ON_CHILD, dir);
    if (isSysError(r)) throw new UnsupportedError(`fanotify unmark of ${dir}: ${r.call}: ${r.message}`);
  }

  /**
   * Answers each event once `fill` settles: allowed when it resolves (the range is then in the
   * file), denied with EIO when it rejects, so a reader gets the bytes or EIO, never a hole.
   */
  listen(fill: (range: PreContentRange) => Promise<void>): void {
    const n = native();
    let end!: () => void;
    this.ended = new Promise((resolve) => (end = resolve));
    this.reader = new n.FanotifyReader(this.fd, (e) => {
      if (!e) return end();
      if (e.fd < 0) return; // the kernel could not open the file for us (the event is denied already)
      const answer = (err: number): void => {
        // A fill that settles after close() answers nothing: the number may be another file's
        // now. The event is the group's other holders' to answer, or the kernel allows it when
        // the group's last holder goes (the reader then finds the file as it is: never a hole).
        if (!this.closed) n.fanotifyRespond(this.fd, e.fd, err);
        closeSync(e.fd);
      };
      fill(e).then(() => answer(0), () => answer(EIO));
    });
  }

  /**
   * Stops reading and closes this process's descriptor. The group lives on while another process
   * holds it. Events still being filled are answered by no one here then (see listen()).
   */
  async close(): Promise<void> {
    this.reader?.stop();
    await this.ended;
    this.closed = true;
    closeSync(this.fd);
  }
}
