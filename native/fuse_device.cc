// The two things a FUSE server written in TypeScript cannot do from Node: mount(2) a FUSE
// filesystem over a /dev/fuse descriptor it opened itself, and read that descriptor without
// tying up libuv's thread pool. DeviceReader runs one thread per connection that polls the
// descriptor and an eventfd (so a stop takes effect at once and never strands a request it has
// read) and hands each request to JavaScript as a Buffer. Replies are written from JavaScript.

#include <napi.h>
#include "sys_error.h"
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <unistd.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <thread>
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

// One request read from the device, or the end of reading (data empty; err 0 after stop()).
struct Message {
  std::vector<uint8_t> data;
  int err = 0;
};

class DeviceReader : public Napi::ObjectWrap<DeviceReader> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceReader", {InstanceMethod("stop", &DeviceReader::Stop)});
  }

  // new DeviceReader(fd, bufferSize, onMessage(request: Buffer | null, errno: number)): null once
  // reading has ended, with errno 0 after stop() and the read's error otherwise (ENODEV: unmounted).
  explicit DeviceReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceReader>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "new DeviceReader(fd, bufferSize, onMessage)").ThrowAsJavaScriptException();
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    size_ = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    if (stop_fd_ < 0) {
      Napi::Error::New(env, std::string("eventfd: ") + std::strerror(errno)).ThrowAsJavaScriptException();
      return;
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "fuse-device-reader", 0, 1);
    thread_ = std::thread([this] { Loop(); });
  }

  ~DeviceReader() override {
    Join();
  }

 private:
  void Loop() {
    std::vector<uint8_t> buf(size_);
    int end = 0;
    for (;;) {
      pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        end = errno;
        break;
      }
      if (fds[1].revents) break;  // stop(): nothing read is left unanswered
      ssize_t n = read(fd_, buf.data(), buf.size());
      if (n < 0) {
        // EAGAIN: another process sharing the connection (a hand-over) took the request first.
        // ENOENT: the request was interrupted before we read it.
        if (errno == EAGAIN || errno == EINTR || errno == ENOENT) continue;
        end = errno;  // ENODEV: unmounted or aborted
        break;
      }
      auto* m = new Message{std::vector<uint8_t>(buf.begin(), buf.begin() + n), 0};
      if (tsfn_.NonBlockingCall(m, Deliver) != napi_ok) delete m;
    }
    // The last message: after it, nothing more comes (err 0: stopped).
    auto* m = new Message{{}, end};
    if (tsfn_.NonBlockingCall(m, Deliver) != napi_ok) delete m;
    tsfn_.Release();
  }

  static void Deliver(Napi::Env env, Napi::Function fn, Message* m) {
    if (env == nullptr) {  // the environment is going away
      delete m;
      return;
    }
    if (m->data.empty()) {
      fn.Call({env.Null(), Napi::Number::New(env, m->err)});
      delete m;
      return;
    }
    auto buf = Napi::Buffer<uint8_t>::New(env, m->data.data(), m->data.size(), [](Napi::Env, uint8_t*, Message* owner) { delete owner; }, m);
    fn.Call({buf, Napi::Number::New(env, 0)});
  }

  void Join() {
    if (!thread_.joinable()) return;
    uint64_t one = 1;
    if (write(stop_fd_, &one, sizeof one) < 0) {
      // an eventfd write only fails on overflow, which one write cannot cause
    }
    thread_.join();
    close(stop_fd_);
  }

  // stop(): the thread reads nothing more; requests already read are still delivered.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Join();
    return info.Env().Undefined();
  }

  int fd_ = -1;
  int stop_fd_ = -1;
  size_t size_ = 0;
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
};

}  // namespace

Napi::Object InitFuseDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("DeviceReader", DeviceReader::Define(env));
  return exports;
}
