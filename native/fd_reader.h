// A non-blocking descriptor watched on Node's own event loop (a libuv poll handle): when it is
// readable, the derived class's Drain() reads what waits there and hands each message to
// JavaScript at once, on the same thread, so a round trip wakes one thread and stop() takes effect
// at once without stranding a message it has read. DeviceReader (/dev/fuse) and FanotifyReader
// (a fanotify group) are its two kinds.

#pragma once

#include <napi.h>
#include <uv.h>
#include <memory>
#include <string>

template <typename Derived>
class FdReader : public Napi::ObjectWrap<Derived> {
 public:
  explicit FdReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Derived>(info) {}

 protected:
  // Starts watching `fd`; `onMessage(message | null, errno)` gets each message, and null once
  // reading has ended (on a later turn, errno 0 after stop()). Throws into JavaScript on failure.
  void Start(Napi::Env env, int fd, Napi::Function onMessage, const char* name) {
    fd_ = fd;
    callback_ = Napi::Persistent(onMessage);
    context_ = std::make_unique<Napi::AsyncContext>(env, name);
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
      Napi::Error::New(env, std::string("poll ") + name + ": " + uv_strerror(err)).ThrowAsJavaScriptException();
      return;
    }
    poll_ = poll;
    this->Ref();  // alive while polling, whatever JavaScript keeps; OnClosed lets go
  }

  // Calls onMessage as the event loop would (microtasks run after it); an exception it throws is
  // the process's uncaught exception.
  void Deliver(Napi::Value message, int err) {
    Napi::Env env = this->Env();
    callback_.MakeCallback(env.Global(), {message, Napi::Number::New(env, err)}, *context_);
    if (env.IsExceptionPending()) napi_fatal_exception(env, env.GetAndClearPendingException().Value());
  }

  // Stops watching; the last message follows once the handle is closed, on a later turn.
  void End(int err) {
    if (ending_) return;
    ending_ = true;
    end_ = err;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), OnClosed);
  }

  // stop(): nothing more is read; every message read so far has been delivered already.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    End(0);
    return info.Env().Undefined();
  }

  int fd_ = -1;
  bool ending_ = false;

 private:
  static void OnReadable(uv_poll_t* handle, int status, int) {
    auto* self = static_cast<FdReader*>(handle->data);
    if (status < 0) return self->End(-status);
    static_cast<Derived*>(self)->Drain();
  }

  static void OnClosed(uv_handle_t* handle) {
    auto* self = static_cast<FdReader*>(handle->data);
    delete reinterpret_cast<uv_poll_t*>(handle);
    self->poll_ = nullptr;
    Napi::HandleScope scope(self->Env());
    self->Deliver(self->Env().Null(), self->end_);
    self->Unref();
  }

  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
  uv_poll_t* poll_ = nullptr;
  int end_ = 0;
};
