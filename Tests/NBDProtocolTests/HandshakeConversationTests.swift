import NBDProtocol
import Testing

/// ClientHandshake and ServerHandshake talking to each other, bytes pumped
/// between them split by every feed strategy.
@Suite struct HandshakeConversationTests {
    struct Conversation: Equatable {
        /// Events other than `.send`, in order.
        var client: [ClientHandshakeEvent] = []
        var server: [ServerHandshakeEvent] = []
        var clientLeftover: [UInt8] = []
        var serverLeftover: [UInt8] = []
    }

    func converse(
        _ goal: ClientHandshake.Goal, _ catalog: ExportCatalog = Fixtures.catalog,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Conversation {
        sameForEveryFeed(sourceLocation: sourceLocation) { chunker in
            var client = ClientHandshake(goal: goal)
            var server = ServerHandshake(catalog: catalog)
            var toClient = server.greeting()
            var toServer: [UInt8] = []
            var conversation = Conversation()
            var rounds = 0
            while !(toClient.isEmpty && toServer.isEmpty) {
                rounds += 1
                guard rounds <= 20 else {
                    Issue.record("handshake did not settle", sourceLocation: sourceLocation)
                    break
                }
                let forClient = toClient
                toClient = []
                for chunk in chunker.split(forClient) {
                    for event in client.receive(chunk) {
                        if case .send(let bytes) = event { toServer += bytes } else { conversation.client.append(event) }
                    }
                }
                let forServer = toServer
                toServer = []
                for chunk in chunker.split(forServer) {
                    for event in server.receive(chunk) {
                        if case .send(let bytes) = event { toClient += bytes } else { conversation.server.append(event) }
                    }
                }
            }
            conversation.clientLeftover = client.takeLeftover()
            conversation.serverLeftover = server.takeLeftover()
            return conversation
        }
    }

    @Test(arguments: [true, false])
    func exportIsSelectedWithTheSameTermsOnBothSides(structured: Bool) throws {
        let conversation = converse(.export("disk", structuredReplies: structured))
        #expect(conversation.server == [.transmission(NegotiatedSession(export: Fixtures.disk, structuredReplies: structured))])
        #expect(conversation.client.count == 1)
        guard case .ready(let session) = conversation.client.first else {
            Issue.record("client did not become ready: \(conversation.client)")
            return
        }
        #expect(session.exportName == "disk")
        #expect(session.size == 1 << 30)
        #expect(session.flags == Fixtures.wireFlags(Fixtures.disk))
        #expect(session.blockSize == Fixtures.disk.blockSize)
        #expect(session.structuredReplies == structured)
        #expect(conversation.clientLeftover.isEmpty)
        #expect(conversation.serverLeftover.isEmpty)
    }

    @Test func readOnlyExportIsReportedReadOnly() {
        let conversation = converse(.export("archive", structuredReplies: true))
        guard case .ready(let session) = conversation.client.first else {
            Issue.record("client did not become ready: \(conversation.client)")
            return
        }
        #expect(session.flags.contains(.readOnly))
        #expect(session.blockSize == Fixtures.archive.blockSize)
        guard case .transmission(let negotiated) = conversation.server.first else {
            Issue.record("server did not start transmission: \(conversation.server)")
            return
        }
        #expect(negotiated.flags == session.flags)
    }

    @Test func emptyNameReachesTheDefaultExport() {
        let conversation = converse(.export("", structuredReplies: false))
        guard case .ready(let session) = conversation.client.first else {
            Issue.record("client did not become ready: \(conversation.client)")
            return
        }
        #expect(session.exportName == "")
        #expect(session.size == Fixtures.disk.size)
        #expect(conversation.server == [.transmission(NegotiatedSession(export: Fixtures.disk, structuredReplies: false))])
    }

    @Test func listReturnsEveryExportAndTheServerKeepsHaggling() {
        let conversation = converse(.list)
        #expect(conversation.server.isEmpty)
        guard case .listed(let exports) = conversation.client.first else {
            Issue.record("client did not list: \(conversation.client)")
            return
        }
        #expect(exports.map(\.name) == ["disk", "archive"])
        #expect(exports.map(\.description) == ["main disk", ""])
    }

    @Test func unknownExportFailsWithTheServersMessage() {
        let conversation = converse(.export("nope", structuredReplies: true))
        #expect(conversation.server.isEmpty)
        #expect(conversation.client == [.failed(.optionRefused(.go, .errUnknown, message: "no export named \"nope\""))])
    }
}
