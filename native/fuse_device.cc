// The two things a FUSE server written in TypeScript cannot do from Node: mount(2) a FUSE
// filesystem over a /dev/fuse descriptor it opened itself, and wait for that descriptor to become
// readable. DeviceReader watches the descriptor on Node's own event loop (fd_reader.h) and hands
// each request waiting there to JavaScript as a Buffer at once, on the same thread: no thread
// hand-off between the kernel and the handler. Replies are written from JavaScript.

#include <napi.h>
#include "fd_reader.h"
#include "sys_error.h"
#include <sys/mount.h>
#include <unistd.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace {

// mount(source, target, fstype, flags, data): true, or an error object.
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 5 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() || !info[3].IsNumber() ||
      !info[4].IsString()) {
    Napi::TypeError::New(env, "mount(source, target, fstype, flags, data)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string source = info[0].As<Napi::String>();
  std::string target = info[1].As<Napi::String>();
  std::string fstype = info[2].As<Napi::String>();
  auto flags = static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value());
  std::string data = info[4].As<Napi::String>();
  if (mount(source.c_str(), target.c_str(), fstype.c_str(), flags, data.c_str()) != 0) return SysError(env, "mount", errno);
  return Napi::Boolean::New(env, true);
}

class DeviceReader : public FdReader<DeviceReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceReader", {InstanceMethod("stop", &DeviceReader::Stop)});
  }

  // new DeviceReader(fd, bufferSize, onMessage(request: Buffer | null, errno: number)): the
  // descriptor must be non-blocking. onMessage(null, errno) comes once reading has ended, on a
  // later turn of the loop, with errno 0 after stop() and the read's error otherwise (ENODEV:
  // unmounted).
  explicit DeviceReader(const Napi::CallbackInfo& info) : FdReader<DeviceReader>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "new DeviceReader(fd, bufferSize, onMessage)").ThrowAsJavaScriptException();
      return;
    }
    buf_.resize(static_cast<size_t>(info[1].As<Napi::Number>().Int64Value()));
    Start(env, info[0].As<Napi::Number>().Int32Value(), info[2].As<Napi::Function>(), "/dev/fuse");
  }

  // At most this many requests per wake-up, so that one busy connection leaves the loop to others.
  static constexpr int kMaxPerWake = 64;

  void Drain() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (int i = 0; i < kMaxPerWake && !ending_; i++) {
      ssize_t n = read(fd_, buf_.data(), buf_.size());
      if (n < 0) {
        // EAGAIN: nothing left, or another process sharing the connection (a hand-over) took it.
        if (errno == EAGAIN) return;
        // EINTR, or ENOENT: the request was interrupted before we read it.
        if (errno == EINTR || errno == ENOENT) continue;
        return End(errno);  // ENODEV: unmounted or aborted
      }
      Deliver(Napi::Buffer<uint8_t>::Copy(env, buf_.data(), static_cast<size_t>(n)), 0);
    }
  }

 private:
  std::vector<uint8_t> buf_;
};

}  // namespace

Napi::Object InitFuseDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("DeviceReader", DeviceReader::Define(env));
  return exports;
}
