// fanotify pre-content events (Linux 6.14 and later): a group of class FAN_CLASS_PRE_CONTENT
// with a FAN_PRE_ACCESS mark on a blob file makes every read of that file wait in the kernel
// until the group answers the event, which carries the byte range read. Node has no binding for
// fanotify_init, fanotify_mark or the event records, and the system headers here predate
// pre-content events, so their numbers are defined below (include/uapi/linux/fanotify.h).
// FanotifyReader watches a group's descriptor on Node's event loop (fd_reader.h) and hands each
// event to JavaScript at once.

#include <napi.h>
#include "fd_reader.h"
#include "sys_error.h"
#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
#endif
#ifndef FAN_ERRNO
#define FAN_ERRNO(err) ((((__u32)(err)) & 0xff) << 24)
#endif

namespace {

// struct fanotify_event_info_range: a pre-content event's range (count 0: the whole file).
struct RangeInfo {
  fanotify_event_info_header hdr;
  uint32_t pad;
  uint64_t offset;
  uint64_t count;
};

// fanotifyInit(flags, eventFlags): the group's descriptor, or an error object.
Napi::Value FanotifyInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "fanotifyInit(flags, eventFlags)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = fanotify_init(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Number>().Uint32Value());
  if (fd < 0) return SysError(env, "fanotify_init", errno);
  return Napi::Number::New(env, fd);
}

// fanotifyMark(fd, flags, mask, path): true, or an error object.
Napi::Value FanotifyMark(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsString()) {
    Napi::TypeError::New(env, "fanotifyMark(fd, flags, mask, path)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[3].As<Napi::String>();
  if (fanotify_mark(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Uint32Value(),
                    static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value()), AT_FDCWD, path.c_str()) != 0) {
    return SysError(env, "fanotify_mark", errno);
  }
  return Napi::Boolean::New(env, true);
}

// fanotifyRespond(fd, eventFd, errno): allows the event's access (errno 0) or denies it, the
// reader getting that errno (FAN_DENY with FAN_ERRNO); true, or an error object.
Napi::Value FanotifyRespond(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "fanotifyRespond(fd, eventFd, errno)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int err = info[2].As<Napi::Number>().Int32Value();
  fanotify_response r{};
  r.fd = info[1].As<Napi::Number>().Int32Value();
  r.response = err == 0 ? FAN_ALLOW : (FAN_DENY | FAN_ERRNO(err));
  if (write(info[0].As<Napi::Number>().Int32Value(), &r, sizeof r) != static_cast<ssize_t>(sizeof r)) {
    return SysError(env, "write(fanotify response)", errno);
  }
  return Napi::Boolean::New(env, true);
}

// pidfdGetfd(pid, fd): a descriptor of this process for the same open file as `pid`'s `fd`
// (pidfd_open + pidfd_getfd): how a successor takes a group over from the process that keeps it,
// the group staying one (its pending events, queue and marks) while some process holds it.
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "pidfdGetfd(pid, fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, info[0].As<Napi::Number>().Int32Value(), 0));
  if (pidfd < 0) return SysError(env, "pidfd_open", errno);
  int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, info[1].As<Napi::Number>().Int32Value(), 0));
  int err = errno;
  close(pidfd);
  if (fd < 0) return SysError(env, "pidfd_getfd", err);
  return Napi::Number::New(env, fd);
}

class FanotifyReader : public FdReader<FanotifyReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FanotifyReader", {InstanceMethod("stop", &FanotifyReader::Stop)});
  }

  // new FanotifyReader(fd, onEvent(event | null, errno)): the descriptor must be non-blocking.
  // An event is {mask, fd, pid, offset, count} (offset and count -1 without a range record);
  // its fd is the reader's own descriptor of the file, to close once answered. onEvent(null,
  // errno) comes once reading has ended, on a later turn, errno 0 after stop().
  explicit FanotifyReader(const Napi::CallbackInfo& info) : FdReader<FanotifyReader>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "new FanotifyReader(fd, onEvent)").ThrowAsJavaScriptException();
      return;
    }
    buf_.resize(64 * 1024);
    Start(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Function>(), "fanotify");
  }

  // One read per wake-up (up to 64 KiB of events), so a busy group leaves the loop to others.
  void Drain() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    ssize_t n = read(fd_, buf_.data(), buf_.size());
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      return End(errno);
    }
    size_t left = static_cast<size_t>(n);
    auto* meta = reinterpret_cast<fanotify_event_metadata*>(buf_.data());
    for (; FAN_EVENT_OK(meta, left) && !ending_; meta = FAN_EVENT_NEXT(meta, left)) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("mask", Napi::Number::New(env, static_cast<double>(meta->mask)));
      e.Set("fd", Napi::Number::New(env, meta->fd));
      e.Set("pid", Napi::Number::New(env, meta->pid));
      double offset = -1, count = -1;
      for (size_t at = meta->metadata_len; at + sizeof(fanotify_event_info_header) <= meta->event_len;) {
        auto* hdr = reinterpret_cast<fanotify_event_info_header*>(reinterpret_cast<uint8_t*>(meta) + at);
        if (hdr->len == 0) break;
        if (hdr->info_type == FAN_EVENT_INFO_TYPE_RANGE && at + sizeof(RangeInfo) <= meta->event_len) {
          RangeInfo range;
          std::memcpy(&range, hdr, sizeof range);
          offset = static_cast<double>(range.offset);
          count = static_cast<double>(range.count);
        }
        at += hdr->len;
      }
      e.Set("offset", Napi::Number::New(env, offset));
      e.Set("count", Napi::Number::New(env, count));
      Deliver(e, 0);
    }
  }

 private:
  std::vector<uint8_t> buf_;
};

}  // namespace

Napi::Object InitFanotify(Napi::Env env, Napi::Object exports) {
  exports.Set("fanotifyInit", Napi::Function::New(env, FanotifyInit));
  exports.Set("fanotifyMark", Napi::Function::New(env, FanotifyMark));
  exports.Set("fanotifyRespond", Napi::Function::New(env, FanotifyRespond));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("FanotifyReader", FanotifyReader::Define(env));
  return exports;
}
