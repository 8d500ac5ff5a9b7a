// The few system calls Node has no binding for: prctl(PR_SET/GET_MEMORY_MERGE), which opts the
// calling process (and, from Linux 6.7, its children across fork and exec) into KSM merging of
// all its anonymous memory, and the page size. Errors come back as {errno, message} objects so
// the TypeScript side can turn them into typed errors.

#include <napi.h>
#include "sys_error.h"
#include <sys/prctl.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif

namespace {

// setMemoryMerge(on: boolean): true, or an error object.
Napi::Value SetMemoryMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsBoolean()) {
    Napi::TypeError::New(env, "setMemoryMerge(on: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  unsigned long on = info[0].As<Napi::Boolean>().Value() ? 1 : 0;
  if (prctl(PR_SET_MEMORY_MERGE, on, 0, 0, 0) != 0) return SysError(env, "prctl(PR_SET_MEMORY_MERGE)", errno);
  return Napi::Boolean::New(env, true);
}

// getMemoryMerge(): boolean, or an error object.
Napi::Value GetMemoryMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
  if (r < 0) return SysError(env, "prctl(PR_GET_MEMORY_MERGE)", errno);
  return Napi::Boolean::New(env, r == 1);
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

Napi::Object InitMemoryMerge(Napi::Env env, Napi::Object exports) {
  exports.Set("setMemoryMerge", Napi::Function::New(env, SetMemoryMerge));
  exports.Set("getMemoryMerge", Napi::Function::New(env, GetMemoryMerge));
  exports.Set("pageSize", Napi::Function::New(env, PageSize));
  return exports;
}
