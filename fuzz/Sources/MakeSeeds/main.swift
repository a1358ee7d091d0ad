// Writes the seed corpora for the fuzz targets: a few valid messages each,
// built with the real encoders and handshake state machines, so the
// fuzzers start from inputs that reach deep into the parsers.
//   swift run --package-path fuzz make-seeds fuzz/corpus
import Foundation
import FuzzFixtures
import NBDProtocol
import PoolFormat

let output = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "corpus"

func save(_ target: String, _ name: String, _ bytes: [UInt8]) {
    let directory = "\(output)/\(target)"
    try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data(bytes))
}

/// Runs a client handshake against the server handshake in memory and
/// returns what each side sent.
func converse(_ goal: ClientHandshake.Goal) -> (client: [UInt8], server: [UInt8]) {
    var server = ServerHandshake(catalog: Fixtures.catalog)
    var client = ClientHandshake(goal: goal)
    var fromServer = server.greeting()
    var clientBytes: [UInt8] = []
    var serverBytes = fromServer
    for _ in 0..<32 {
        var fromClient: [UInt8] = []
        var finished = false
        for event in client.receive(fromServer) {
            switch event {
            case .send(let bytes): fromClient += bytes
            case .ready, .listed, .failed: finished = true
            }
        }
        clientBytes += fromClient
        if finished || fromClient.isEmpty { break }
        fromServer = []
        for event in server.receive(fromClient) {
            if case .send(let bytes) = event { fromServer += bytes }
        }
        serverBytes += fromServer
    }
    return (clientBytes, serverBytes)
}

func request(_ command: Command, cookie: UInt64, offset: UInt64, length: UInt32, flags: CommandFlags = []) -> [UInt8] {
    var bytes: [UInt8] = []
    RequestHeader(flags: flags, command: command, cookie: cookie, offset: offset, length: length).encode(into: &bytes)
    return bytes
}

// MARK: fuzz-server-requests: client bytes, first byte = read size (0: all at once)

let requests = request(.read, cookie: 1, offset: 0, length: 4096)
    + request(.write, cookie: 2, offset: 4096, length: 512, flags: [.fua]) + [UInt8](repeating: 0xAB, count: 512)
    + request(.flush, cookie: 3, offset: 0, length: 0)
    + request(.trim, cookie: 4, offset: 8192, length: 4096)
    + request(.writeZeroes, cookie: 5, offset: 0, length: 1 << 20, flags: [.noHole])
    + request(.read, cookie: 6, offset: (1 << 30) - 512, length: 512)
    + request(.disconnect, cookie: 7, offset: 0, length: 0)
let structuredConversation = converse(.export(Fixtures.exportName, structuredReplies: true))
let simpleConversation = converse(.export(Fixtures.exportName, structuredReplies: false))
let listConversation = converse(.list)
save("fuzz-server-requests", "go-structured-requests", [0] + structuredConversation.client + requests)
save("fuzz-server-requests", "go-simple-requests-in-7-byte-reads", [7] + simpleConversation.client + requests)
save("fuzz-server-requests", "list", [0] + listConversation.client)
save("fuzz-server-requests", "oversized-write", [0] + structuredConversation.client
    + request(.write, cookie: 9, offset: 0, length: 1 << 26) + [UInt8](repeating: 1, count: 64))

// MARK: fuzz-client-replies: mode byte (1: handshake, 2: structured, 4: list), read size, server bytes

func simpleReply(_ cookie: UInt64, error: UInt32 = 0) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendBigEndian(NBDMagic.simpleReply)
    bytes.appendBigEndian(error)
    bytes.appendBigEndian(cookie)
    return bytes
}

func chunk(_ cookie: UInt64, _ type: StructuredReplyType, done: Bool, _ payload: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendBigEndian(NBDMagic.structuredReply)
    bytes.appendBigEndian(done ? ReplyFlags.done.rawValue : 0)
    bytes.appendBigEndian(type.rawValue)
    bytes.appendBigEndian(cookie)
    bytes.appendBigEndian(UInt32(payload.count))
    return bytes + payload
}

func offsetData(_ cookie: UInt64, _ offset: UInt64, _ data: [UInt8], done: Bool) -> [UInt8] {
    var payload: [UInt8] = []
    payload.appendBigEndian(offset)
    return chunk(cookie, .offsetData, done: done, payload + data)
}

func offsetHole(_ cookie: UInt64, _ offset: UInt64, _ length: UInt32, done: Bool) -> [UInt8] {
    var payload: [UInt8] = []
    payload.appendBigEndian(offset)
    payload.appendBigEndian(length)
    return chunk(cookie, .offsetHole, done: done, payload)
}

func errorChunk(_ cookie: UInt64, _ error: NBDErrorCode, _ message: String, done: Bool = true) -> [UInt8] {
    var payload: [UInt8] = []
    payload.appendBigEndian(error.rawValue)
    payload.appendBigEndian(UInt16(message.utf8.count))
    payload.append(contentsOf: message.utf8)
    return chunk(cookie, .error, done: done, payload)
}

let simpleReplies = simpleReply(1) + [UInt8](repeating: 0x11, count: 4096)
    + simpleReply(2) + simpleReply(3) + simpleReply(4, error: NBDErrorCode.ioError.rawValue)
    + simpleReply(5) + simpleReply(6) + [0x66] + simpleReply(7)
let structuredReplies = offsetData(1, 0, [UInt8](repeating: 0x11, count: 4096), done: true)
    + ReplyEncoder.completion(cookie: 2, error: nil, command: .write, structured: true)
    + ReplyEncoder.completion(cookie: 3, error: nil, command: .flush, structured: true)
    + offsetHole(4, 1 << 20, 4096, done: false) + offsetData(4, (1 << 20) + 4096, [UInt8](repeating: 0x44, count: 4096), done: true)
    + ReplyEncoder.completion(cookie: 5, error: .noSpace, message: "full", command: .trim, structured: true)
    + errorChunk(6, .ioError, "bad sector")
    + ReplyEncoder.completion(cookie: 7, error: nil, command: .writeZeroes, structured: true)
save("fuzz-client-replies", "handshake-structured", [3, 0] + structuredConversation.server + structuredReplies)
save("fuzz-client-replies", "handshake-simple", [1, 0] + simpleConversation.server + simpleReplies)
save("fuzz-client-replies", "list", [5, 0] + listConversation.server)
save("fuzz-client-replies", "replies-structured-in-13-byte-reads", [2, 13] + structuredReplies)
save("fuzz-client-replies", "replies-simple", [0, 0] + simpleReplies)

// MARK: fuzz-pool-format: selector byte (low nibble: structure), structure bytes

let salt = SessionSalt(bytes: (0..<16).map { UInt8($0) })
let pointer = BlockPointer(
    block: 1234, salt: salt, counter: NonceCounter(rawValue: 77), generation: 9, tag: [UInt8](repeating: 0xC3, count: 16))
let poolID = [UInt8](repeating: 0x42, count: 16)
let mac = [UInt8](repeating: 0x5A, count: 32)
let superblock = Superblock(
    poolID: poolID, generation: 12, anchorEpoch: 0, checkpointRoot: pointer, logHead: pointer, logRecordCount: 3, logBlockCount: 1)
save("fuzz-pool-format", "superblock", [0] + superblock.block(mac: mac))
let header = PoolHeader(
    poolID: poolID, blockCount: 4096, updateCounter: 2,
    keyslotDigests: (0..<PoolLayout.keyslotCount).map { [UInt8](repeating: $0 < 2 ? 0x99 : 0, count: 32) })
save("fuzz-pool-format", "pool-header", [1] + header.block(mac: mac))
let keyslot = KeyslotBlock(
    type: .passphrase, slot: 0, salt: [UInt8](repeating: 1, count: 32), kdfLog2N: 14, kdfR: 8, kdfP: 1,
    nonce: [UInt8](repeating: 2, count: 12), sealedKey: [UInt8](repeating: 3, count: 32), tag: [UInt8](repeating: 4, count: 16))
save("fuzz-pool-format", "keyslot", [2] + keyslot.encoded())
var node = TreeNode()
node.children[0] = pointer
node.children[63] = pointer
save("fuzz-pool-format", "tree-node", [3] + node.encoded())
let log = LogBlock(
    sequence: 4, previous: pointer,
    records: [
        .map(volume: VolumeID(rawValue: 1), block: LogicalBlock(5), pointer: pointer),
        .unmap(volume: VolumeID(rawValue: 1), start: LogicalBlock(8), count: 16),
    ])
save("fuzz-pool-format", "log-block", [4] + log.encoded())
let object = PoolObject(
    blockCount: 4096, spaceMapDepth: 1, spaceMapRoot: pointer, volumeTable: [pointer], nextVolumeID: VolumeID(rawValue: 3))
save("fuzz-pool-format", "pool-object", [5] + object.encoded())
let table = VolumeTableBlock(volumes: [
    VolumeRecord(id: VolumeID(rawValue: 1), name: "vm1", size: 1 << 20, depth: 2, root: pointer, key: [UInt8](repeating: 7, count: 32)),
    VolumeRecord(id: VolumeID(rawValue: 2), name: "data.disk", size: 4096, depth: 0, root: .null, key: [UInt8](repeating: 8, count: 32)),
])
save("fuzz-pool-format", "volume-table", [6] + table.encoded())
save("fuzz-pool-format", "block-pointer", [7] + pointer.encoded())
print("seeds written to \(output)")
