import Foundation
import Testing
import TestSupport
@testable import OPCUA

/// Against scripts/opcua_hostile_server.py: every malformed answer closes the channel with a
/// typed error; nothing crashes, nothing allocates what the server announces.
@Suite("OPC UA client against a hostile server", .serialized)
struct HostileServerTests {
    /// Connects to a hostile server in `mode` and returns the error the client ended with.
    private func failure(_ mode: String, options: OPCUAClientOptions = OPCUAClientOptions()) async throws -> OPCUAError {
        let server = try OPCUAPeer.hostile(mode)
        defer { server.stop() }
        let endpoint = server.endpoint
        let outcome = try await onThread { () -> (OPCUAError?, Bool) in
            let c = try OPCUAClient(endpoint: endpoint, options: options)
            do { try c.connect() } catch let e as OPCUAError {
                // After the failure the client is closed: a request is refused without I/O.
                var closed = false
                do { _ = try c.readValues([.numeric(2258)]) } catch let again as OPCUAError { closed = again.kind == .channelClosed }
                return (e, closed)
            }
            return (nil, false)
        }
        let e = try #require(outcome.0, "\(mode): connected to a hostile server")
        #expect(outcome.1, "\(mode): the client is not closed after \(e)")
        return e
    }

    @Test("an ERR message: its StatusCode and reason")
    func errMessage() async throws {
        let e = try await failure("err")
        #expect(e.kind == .serverError(StatusCode(rawValue: 0x8083_0000), reason: "no such endpoint"))
        #expect(e.statusCode?.name == "BadTcpEndpointUrlInvalid")
    }

    @Test("an Acknowledge below Part 6's minimum buffer")
    func badAcknowledge() async throws {
        let e = try await failure("badack")
        guard case .protocolViolation(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why.contains("ReceiveBufferSize 100"))
    }

    @Test("an unknown message type")
    func wrongType() async throws {
        let e = try await failure("wrongtype")
        guard case .protocolViolation(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why.contains("unknown message type"))
    }

    @Test("a chunk announcing 4 GiB is refused from its header")
    func hugeChunk() async throws {
        let e = try await failure("huge")
        guard case .limitExceeded(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why.contains("4294967280"))
    }

    @Test("a truncated chunk: the server closed the connection")
    func truncated() async throws {
        let e = try await failure("truncated")
        #expect(e.kind == .closedByPeer)
        #expect(e.operation == "OpenSecureChannel")
    }

    @Test("a chunk body that is not a message: a decoding error")
    func garbage() async throws {
        let e = try await failure("garbage")
        guard case .decoding(let d) = e.kind else { Issue.record("\(e)"); return }
        #expect(d.field.contains("OpenSecureChannelResponse"))
    }

    @Test("an endless run of chunks stops at the chunk limit")
    func chunkFlood() async throws {
        var options = OPCUAClientOptions()
        options.tcpLimits.maxChunkCount = 16
        let e = try await failure("chunkflood", options: options)
        guard case .limitExceeded(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why.contains("16 chunks"))
        #expect(e.operation == "CreateSession")
    }

    @Test("a response to a request never made")
    func wrongRequestId() async throws {
        let e = try await failure("wrongid")
        guard case .protocolViolation(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why.contains("response to request"))
    }

    @Test("a sequence number that skips ahead")
    func sequenceJump() async throws {
        let e = try await failure("seqjump")
        guard case .protocolViolation(let why) = e.kind else { Issue.record("\(e)"); return }
        #expect(why == "sequence number 5 after 1")
    }

    @Test("an abort chunk: its StatusCode and reason")
    func abortChunk() async throws {
        let e = try await failure("abort")
        #expect(e.kind == .aborted(StatusCode(rawValue: 0x80B8_0000), reason: "request too large"))
        #expect(e.statusCode?.name == "BadRequestTooLarge")
        #expect(e.operation == "CreateSession")
    }

    @Test("a server that never answers: a timeout")
    func silent() async throws {
        var options = OPCUAClientOptions()
        options.timeoutMs = 500
        let e = try await failure("silent", options: options)
        #expect(e.kind == .timeout)
        #expect(e.statusCode == .badTimeout)
    }
}
