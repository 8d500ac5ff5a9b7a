// The two things a FUSE server written in TypeScript cannot do from Node: mount(2) a FUSE
// filesystem over a /dev/fuse descriptor it opened itself, and wait for that descriptor to become
// readable. DeviceReader watches the descriptor on Node's own event loop (a libuv poll handle)
// and, when it is readable, reads the requests waiting there and hands each to JavaScript as a
// Buffer at once, on the same thread: no thread hand-off between the kernel and the handler, so a
// round trip wakes one thread, and a stop takes effect at once without stranding a request it
// has read. Replies are written from JavaScript.

#include <napi.h>
#include <uv.h>
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

class DeviceReader : public Napi::ObjectWrap<DeviceReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceReader", {InstanceMethod("stop", &DeviceReader::Stop)});
  }

  // new DeviceReader(fd, bufferSize, onMessage(request: Buffer | null, errno: number)): the
  // descriptor must be non-blocking. onMessage(null, errno) comes once reading has ended, on a
  // later turn of the loop, with errno 0 after stop() and the read's error otherwise (ENODEV:
  // unmounted).
  explicit DeviceReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceReader>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "new DeviceReader(fd, bufferSize, onMessage)").ThrowAsJavaScriptException();
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    buf_.resize(static_cast<size_t>(info[1].As<Napi::Number>().Int64Value()));
    callback_ = Napi::Persistent(info[2].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "fuse-device-reader");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      Napi::Error::New(env, "no event loop").ThrowAsJavaScriptException();
      return;
    }
    auto* poll = new uv_poll_t;
    int err = uv_poll_init(loop, poll, fd_);
    if (err != 0) {
      delete poll;
    } else {
      poll->data = this;
      err = uv_poll_start(poll, UV_READABLE, OnReadable);
      if (err != 0) uv_close(reinterpret_cast<uv_handle_t*>(poll), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    }
    if (err != 0) {
      Napi::Error::New(env, std::string("poll /dev/fuse: ") + uv_strerror(err)).ThrowAsJavaScriptException();
      return;
    }
    poll_ = poll;
    Ref();  // alive while polling, whatever JavaScript keeps; OnClosed lets go
  }

 private:
  // At most this many requests per wake-up, so that one busy connection leaves the loop to others.
  static constexpr int kMaxPerWake = 64;

  static void OnReadable(uv_poll_t* handle, int status, int) {
    auto* self = static_cast<DeviceReader*>(handle->data);
    if (status < 0) return self->End(-status);
    self->Drain();
  }

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

  // Calls onMessage as the event loop would (microtasks run after it); an exception it throws is
  // the process's uncaught exception.
  void Deliver(Napi::Value request, int err) {
    Napi::Env env = Env();
    callback_.MakeCallback(env.Global(), {request, Napi::Number::New(env, err)}, *context_);
    if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
  }

  // Stops watching; the last message follows once the handle is closed, on a later turn.
  void End(int err) {
    if (ending_) return;
    ending_ = true;
    end_ = err;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), OnClosed);
  }

  static void OnClosed(uv_handle_t* handle) {
    auto* self = static_cast<DeviceReader*>(handle->data);
    delete reinterpret_cast<uv_poll_t*>(handle);
    self->poll_ = nullptr;
    Napi::HandleScope scope(self->Env());
    self->Deliver(self->Env().Null(), self->end_);
    self->Unref();
  }

  // stop(): nothing more is read; every request read so far has been delivered already.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    End(0);
    return info.Env().Undefined();
  }

  int fd_ = -1;
  std::vector<uint8_t> buf_;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
  uv_poll_t* poll_ = nullptr;
  bool ending_ = false;
  int end_ = 0;
};

}  // namespace

Napi::Object InitFuseDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("DeviceReader", DeviceReader::Define(env));
  return exports;
}
