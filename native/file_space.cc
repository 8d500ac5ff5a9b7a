// fallocate(2) with FALLOC_FL_PUNCH_HOLE: frees the disk blocks of a dead chunk inside a pack file
// without moving the live chunks around it, whose offsets mounted EROFS images point at. Node's fs
// has no binding for it.

#include <napi.h>
#include "sys_error.h"
#include <fcntl.h>
#include <linux/falloc.h>
#include <cerrno>

namespace {

// punchHole(fd, offset, length): true, or an error object. The file keeps its size.
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "punchHole(fd, offset, length)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  auto offset = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  auto length = static_cast<off_t>(info[2].As<Napi::Number>().Int64Value());
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) return SysError(env, "fallocate(PUNCH_HOLE)", errno);
  return Napi::Boolean::New(env, true);
}

}  // namespace

Napi::Object InitFileSpace(Napi::Env env, Napi::Object exports) {
  exports.Set("punchHole", Napi::Function::New(env, PunchHole));
  return exports;
}
