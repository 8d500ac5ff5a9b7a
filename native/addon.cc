// The native addon: the system calls Node has no binding for (see each file).

#include <napi.h>

Napi::Object InitMemoryMerge(Napi::Env env, Napi::Object exports);
Napi::Object InitFuseDevice(Napi::Env env, Napi::Object exports);
Napi::Object InitFileSpace(Napi::Env env, Napi::Object exports);
Napi::Object InitErofsMount(Napi::Env env, Napi::Object exports);
Napi::Object InitXattrs(Napi::Env env, Napi::Object exports);
Napi::Object InitFanotify(Napi::Env env, Napi::Object exports);

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitMemoryMerge(env, exports);
  InitFileSpace(env, exports);
  InitErofsMount(env, exports);
  InitXattrs(env, exports);
  InitFanotify(env, exports);
  return InitFuseDevice(env, exports);
}

}  // namespace

NODE_API_MODULE(dedup_native, Init)
