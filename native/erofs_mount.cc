// Mounting a file-backed EROFS image with its blob devices through the new mount API (fsopen,
// fsconfig, fsmount, move_mount): mount(2) copies its options as one page, so the "device=" paths
// of an image whose chunks sit in many pack files would not fit; fsconfig takes each device as
// a parameter of its own. Node has no binding for these calls.

#include <napi.h>
#include "sys_error.h"
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/mount.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <string>
#include <vector>

#ifndef FS_IOC_GETFSSYSFSPATH  // Linux 6.10; older headers lack it
struct fs_sysfs_path {
  __u8 len;
  __u8 name[128];
};
#define FS_IOC_GETFSSYSFSPATH _IOR(0x15, 1, struct fs_sysfs_path)
#endif

namespace {

int FsOpen(const char* fs) { return static_cast<int>(syscall(SYS_fsopen, fs, FSOPEN_CLOEXEC)); }
int FsConfig(int fd, unsigned cmd, const char* key, const char* value) { return static_cast<int>(syscall(SYS_fsconfig, fd, cmd, key, value, 0)); }
int FsMount(int fd, unsigned attrs) { return static_cast<int>(syscall(SYS_fsmount, fd, FSMOUNT_CLOEXEC, attrs)); }
int MoveMount(int from, const char* to) { return static_cast<int>(syscall(SYS_move_mount, from, "", AT_FDCWD, to, MOVE_MOUNT_F_EMPTY_PATH)); }

// mountErofs(image, target, devices: string[]): true, or an error object (its call names the step).
Napi::Value MountErofs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsArray()) {
    Napi::TypeError::New(env, "mountErofs(image, target, devices)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string image = info[0].As<Napi::String>();
  std::string target = info[1].As<Napi::String>();
  Napi::Array list = info[2].As<Napi::Array>();
  std::vector<std::string> devices;
  for (uint32_t i = 0; i < list.Length(); i++) devices.push_back(list.Get(i).As<Napi::String>());

  int fs = FsOpen("erofs");
  if (fs < 0) return SysError(env, "fsopen(erofs)", errno);
  auto fail = [&](const char* call) {
    int err = errno;
    close(fs);
    return SysError(env, call, err);
  };
  if (FsConfig(fs, FSCONFIG_SET_STRING, "source", image.c_str()) < 0) return fail("fsconfig(source)");
  for (const auto& d : devices) {
    if (FsConfig(fs, FSCONFIG_SET_STRING, "device", d.c_str()) < 0) return fail("fsconfig(device)");
  }
  if (FsConfig(fs, FSCONFIG_SET_FLAG, "ro", nullptr) < 0) return fail("fsconfig(ro)");
  if (FsConfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr) < 0) return fail("fsconfig(create)");
  int mnt = FsMount(fs, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID);
  if (mnt < 0) return fail("fsmount");
  close(fs);
  if (MoveMount(mnt, target.c_str()) < 0) {
    int err = errno;
    close(mnt);
    return SysError(env, "move_mount", err);
  }
  close(mnt);
  return Napi::Boolean::New(env, true);
}

// sysfsName(path): the name under /sys/fs of the filesystem holding path ("erofs/erofs-12",
// "ext4/vda"; FS_IOC_GETFSSYSFSPATH), or an error object (ENOTTY before 6.10 or where the
// filesystem has none).
Napi::Value SysfsName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "sysfsName(path)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SysError(env, "open", errno);
  struct fs_sysfs_path p = {};
  int r = ioctl(fd, FS_IOC_GETFSSYSFSPATH, &p);
  int err = errno;
  close(fd);
  if (r < 0) return SysError(env, "ioctl(FS_IOC_GETFSSYSFSPATH)", err);
  return Napi::String::New(env, reinterpret_cast<const char*>(p.name), p.len < sizeof(p.name) ? p.len : sizeof(p.name));
}

}  // namespace

Napi::Object InitErofsMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mountErofs", Napi::Function::New(env, MountErofs));
  exports.Set("sysfsName", Napi::Function::New(env, SysfsName));
  return exports;
}
