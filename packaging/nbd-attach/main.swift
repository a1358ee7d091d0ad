// nbd-attach: connects the kernel's NBD driver (/dev/nbdN) to one export of
// an NBD server on a Unix socket, through the driver's ioctl interface.
//
//     nbd-attach SOCKET EXPORT DEVICE
//
// It does the fixed-newstyle handshake itself (NBD_OPT_GO, proto.md), hands
// the connected socket to the driver and then sits in NBD_DO_IT for as long
// as the device is attached, so it must keep running (the initramfs /init
// starts it in the background and waits for /sys/block/nbdN/size). It is the
// initramfs's bridge until `bulkhead boot --root EXPORT --mount` attaches
// the root volume itself; busybox's nbd-client speaks only TCP.
//
// Built on its own by packaging/build-static (imports nothing but Glibc).
import Glibc

let program = "nbd-attach"

func fail(_ message: String) -> Never {
    let line = "\(program): \(message)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(1)
}

func errnoText() -> String { String(cString: strerror(errno)) }

// The driver's ioctls: _IO(0xab, n) (linux/nbd.h).
enum NBDIoctl {
    static let setSocket: UInt = 0xab00
    static let setBlockSize: UInt = 0xab01
    static let doIt: UInt = 0xab03
    static let clearSocket: UInt = 0xab04
    static let clearQueue: UInt = 0xab05
    static let setSizeBlocks: UInt = 0xab07
    static let setFlags: UInt = 0xab0a
}

// Handshake constants (proto.md).
let initialMagic: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
let optionMagic: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
let replyMagic: UInt64 = 0x0003_e889_0455_65a9
let flagFixedNewstyle: UInt16 = 1 << 0
let flagNoZeroes: UInt16 = 1 << 1
let optionGo: UInt32 = 7
let replyAck: UInt32 = 1
let replyInfo: UInt32 = 3
let replyErrorBit: UInt32 = 1 << 31
let infoExport: UInt16 = 0
/// Longest option reply accepted; NBD_REP_INFO and error strings are far shorter.
let maxReplyLength: UInt32 = 64 * 1024
/// The block size the driver is given; Bulkhead volumes are multiples of it.
let blockSize: UInt64 = 4096

func readExactly(_ fd: Int32, _ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        // SAFETY: the pointer covers bytes[done..<count], which `bytes` owns.
        let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, count - done) }
        if got < 0 && errno == EINTR { continue }
        guard got > 0 else { fail(got == 0 ? "the server closed the connection during the handshake" : "read: \(errnoText())") }
        done += got
    }
    return bytes
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var done = 0
    while done < bytes.count {
        // SAFETY: the pointer covers bytes[done...], which `bytes` owns.
        let sent = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        if sent < 0 && errno == EINTR { continue }
        guard sent > 0 else { fail("write: \(errnoText())") }
        done += sent
    }
}

func bigEndian<T: FixedWidthInteger>(_ bytes: ArraySlice<UInt8>, as: T.Type) -> T {
    bytes.reduce(T.zero) { ($0 << 8) | T($1) }
}

func encode<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
}

func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { fail("socket: \(errnoText())") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let pathBytes = Array(path.utf8)
    guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else { fail("socket path too long: \(path)") }
    // SAFETY: sun_path is a fixed C array longer than pathBytes (checked above); the rest stays zero.
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
    let result = withUnsafePointer(to: &address) {
        // SAFETY: sockaddr_un is layout-compatible with sockaddr for connect.
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard result == 0 else { fail("connect \(path): \(errnoText())") }
    return fd
}

/// Fixed-newstyle handshake with NBD_OPT_GO: the export's size and transmission flags.
func handshake(_ fd: Int32, export: String) -> (size: UInt64, flags: UInt16) {
    let greeting = readExactly(fd, 18)
    guard bigEndian(greeting[0..<8], as: UInt64.self) == initialMagic,
        bigEndian(greeting[8..<16], as: UInt64.self) == optionMagic
    else { fail("not a newstyle NBD server") }
    let serverFlags = bigEndian(greeting[16..<18], as: UInt16.self)
    guard serverFlags & flagFixedNewstyle != 0 else { fail("the server does not offer fixed newstyle") }
    let clientFlags = UInt32(flagFixedNewstyle | (serverFlags & flagNoZeroes))
    let name = Array(export.utf8)
    let data = encode(UInt32(name.count)) + name + encode(UInt16(0))
    writeAll(fd, encode(clientFlags) + encode(optionMagic) + encode(optionGo) + encode(UInt32(data.count)) + data)

    var found: (size: UInt64, flags: UInt16)?
    while true {
        let header = readExactly(fd, 20)
        guard bigEndian(header[0..<8], as: UInt64.self) == replyMagic else { fail("bad option reply magic") }
        guard bigEndian(header[8..<12], as: UInt32.self) == optionGo else { fail("reply to an option not sent") }
        let type = bigEndian(header[12..<16], as: UInt32.self)
        let length = bigEndian(header[16..<20], as: UInt32.self)
        guard length <= maxReplyLength else { fail("option reply of \(length) bytes exceeds \(maxReplyLength)") }
        let body = readExactly(fd, Int(length))
        if type & replyErrorBit != 0 {
            fail("the server refused export \"\(export)\" (error 0x\(String(type, radix: 16))): \(String(decoding: body, as: UTF8.self))")
        }
        switch type {
        case replyInfo where body.count >= 2 && bigEndian(body[0..<2], as: UInt16.self) == infoExport:
            guard body.count == 12 else { fail("NBD_INFO_EXPORT of \(body.count) bytes") }
            found = (bigEndian(body[2..<10], as: UInt64.self), bigEndian(body[10..<12], as: UInt16.self))
        case replyInfo:
            continue
        case replyAck:
            guard let found else { fail("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT") }
            return found
        default:
            fail("unexpected option reply type \(type)")
        }
    }
}

/// An ioctl whose argument is an unsigned long passed by value (Swift's
/// Glibc offers only an Int32 or a pointer for the variadic argument).
func ioctlOrFail(_ device: Int32, _ request: UInt, _ argument: UInt, _ what: String) {
    let result =
        if let asPointer = UnsafeMutableRawPointer(bitPattern: argument) {
            ioctl(device, request, asPointer)
        } else {
            ioctl(device, request, Int32(0))
        }
    guard result >= 0 else { fail("\(what): \(errnoText())") }
}

let arguments = CommandLine.arguments
guard arguments.count == 4 else { fail("usage: nbd-attach SOCKET EXPORT DEVICE") }
let (socketPath, exportName, devicePath) = (arguments[1], arguments[2], arguments[3])

let connection = connectUnix(socketPath)
let (size, flags) = handshake(connection, export: exportName)
guard size > 0, size % blockSize == 0 else { fail("export size \(size) is not a positive multiple of \(blockSize)") }

let device = open(devicePath, O_RDWR | O_CLOEXEC)
guard device >= 0 else { fail("open \(devicePath): \(errnoText())") }
ioctlOrFail(device, NBDIoctl.setBlockSize, UInt(blockSize), "NBD_SET_BLKSIZE")
ioctlOrFail(device, NBDIoctl.setSizeBlocks, UInt(size / blockSize), "NBD_SET_SIZE_BLOCKS")
ioctlOrFail(device, NBDIoctl.setFlags, UInt(flags), "NBD_SET_FLAGS")
ioctlOrFail(device, NBDIoctl.setSocket, UInt(connection), "NBD_SET_SOCK")
// Serves the device until it is disconnected or the server goes away.
let served = ioctl(device, NBDIoctl.doIt, Int32(0))
let reason = served < 0 ? errnoText() : "disconnected"
_ = ioctl(device, NBDIoctl.clearQueue, Int32(0))
_ = ioctl(device, NBDIoctl.clearSocket, Int32(0))
fail("\(devicePath) detached: \(reason)")
