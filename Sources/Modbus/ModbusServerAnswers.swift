import CLinux
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// Serving one connection: read, frame (`ModbusRequestCheck`), answer by the policy, flush.
/// Loop thread only.
extension ServerLoop {
    func serve(_ c: ServerConnection, events ev: UInt32) {
        if ev & ServerLoop.epollOut != 0 {
            if !flush(c) { return }
        }
        if ev & (ServerLoop.epollIn | ServerLoop.epollErr) != 0 {
            if isStalled(c) {
                // Input waits in the kernel until the stall ends (an EPOLLIN here was collected
                // before the stall began, in the same batch); an error or hang-up closes.
                if ev & ServerLoop.epollErr != 0 { closeConnection(c, .peerClosed) }
                return
            }
            readAndAnswer(c)
        }
    }

    private func readAndAnswer(_ c: ServerConnection) {
        let room = min(ServerLoop.readChunk, ServerConnection.inputCapacity - c.inputCount)
        let n: Int
        do {
            n = try SystemCall.retrying { recv(c.fd, c.input.baseAddress! + c.inputCount, room, 0) }
        } catch {
            let e = error.rawValue
            if e == EAGAIN || e == EWOULDBLOCK { return }
            closeConnection(c, e == ECONNRESET ? .peerClosed : .socketError(e))
            return
        }
        if n == 0 {
            _ = flush(c)
            if connections[Int(c.fd)] === c { closeConnection(c, .peerClosed) }
            return
        }
        c.inputCount += n
        answerBuffered(c)
    }

    /// Answers every complete frame in the connection's input, keeps a partial one, flushes.
    func answerBuffered(_ c: ServerConnection) {
        var offset = 0
        var completed = false
        while true {
            let framing = ModbusRequestCheck.framing(UnsafeRawBufferPointer(rebasing: c.input[offset..<c.inputCount]))
            guard case .frame(let length) = framing else {
                if case .malformed(let problem) = framing {
                    closeMalformed(c, problem)
                    return
                }
                break
            }
            let frame = UnsafeRawBufferPointer(rebasing: c.input[offset..<(offset + length)])
            offset += length
            completed = true
            let open = delegate == nil ? answer(frame, on: c) : answerByDelegate(frame, on: c)
            if !open { return }
            // A delegate may stall this listener while answering: the rest waits in the buffer.
            if delegate != nil && isStalled(c) { break }
        }
        let rest = c.inputCount - offset
        if offset > 0 && rest > 0 {
            (c.input.baseAddress! + offset).withMemoryRebound(to: UInt8.self, capacity: rest) { src in
                c.input.baseAddress!.copyMemory(from: src, byteCount: rest)
            }
        }
        c.inputCount = rest
        if rest == 0 {
            c.partialSince = 0
        } else if completed || c.partialSince == 0 {
            c.partialSince = now
        }
        if completed { c.lastRequest = now }
        commitCounters()
        _ = flush(c)
    }

    private func closeMalformed(_ c: ServerConnection, _ problem: ModbusFrameProblem) {
        delta.closedMalformed += 1
        commitCounters()
        _ = flush(c)
        if connections[Int(c.fd)] === c { closeConnection(c, .malformed(problem)) }
    }

    /// `.readOnly`: answers one complete frame from the published image; false if the
    /// connection was closed.
    private func answer(_ frame: UnsafeRawBufferPointer, on c: ServerConnection) -> Bool {
        delta.requests += 1
        let image = shared.published.withLock { $0.image }
        let decision = ModbusRequestCheck.decide(
            frame, unit: configuration.unit,
            sizes: (image.coils.count, image.discreteInputs.count, image.holdingRegisters.count, image.inputRegisters.count))
        do {
            switch decision {
            case .read:
                if mapped !== image {
                    try replier.load(coils: image.coils, discreteInputs: image.discreteInputs,
                                     holdingRegisters: image.holdingRegisters, inputRegisters: image.inputRegisters)
                    mapped = image
                }
                // Nothing queued for this client: straight onto its socket if the kernel's send
                // queue is empty too; otherwise (or if that sends nothing) through the pair and
                // the output buffer, which keeps the order and handles partial writes.
                if c.pendingOutput == 0 {
                    do {
                        if try replier.replyDirect(to: frame, socket: c.fd) {
                            delta.readsAnswered += 1
                            delta.readsSentDirect += 1
                            return true
                        }
                    } catch where error.errno == EPIPE || error.errno == ECONNRESET {
                        closeConnection(c, .peerClosed)
                        return false
                    }
                }
                try replier.reply(to: frame, into: &c.output)
                delta.readsAnswered += 1
            case .exception(let code):
                try replier.replyException(to: frame, code: code, into: &c.output)
                delta.countException(code)
            case .writeRejected(let code, let function, let address, let count):
                try replier.replyException(to: frame, code: code, into: &c.output)
                delta.countException(code)
                delta.writesRejected += 1
                commitCounters()
                events(.writeRejected(peer: c.peer, unit: frame[6], function: function, address: address, count: count))
            case .close(let problem):
                closeMalformed(c, problem)
                return false
            }
        } catch {
            replyFailed(c, error)
            return false
        }
        return true
    }

    /// `.delegate`: asks the delegate and answers as it says; false if the connection was closed.
    private func answerByDelegate(_ frame: UnsafeRawBufferPointer, on c: ServerConnection) -> Bool {
        delta.requests += 1
        let fc = frame[7]
        if fc >= 0x80 {
            closeMalformed(c, .exceptionFunction(fc))
            return false
        }
        let action = delegate!.answer(ModbusRequest(frame: frame, listener: c.listener), server: ModbusServerControl(loop: self))
        guard connections[Int(c.fd)] === c else { return false }  // the delegate closed it
        do {
            switch action {
            case .close:
                _ = flush(c)
                if connections[Int(c.fd)] === c { closeConnection(c, .closedByOwner) }
                return false
            case .ignore:
                return true
            case .exception(let code):
                try replier.replyException(to: frame, code: code, into: &c.output)
                delta.countException(code)
            case .reply(let mapping):
                if let code = ModbusRequestCheck.replyProblem(frame) {
                    try replier.replyException(to: frame, code: code, into: &c.output)
                    delta.countException(code)
                    return true
                }
                if c.pendingOutput == 0 {
                    do {
                        if try replier.replyDirect(to: frame, from: mapping.raw, socket: c.fd) {
                            delta.readsAnswered += 1
                            delta.readsSentDirect += 1
                            return true
                        }
                    } catch where error.errno == EPIPE || error.errno == ECONNRESET {
                        closeConnection(c, .peerClosed)
                        return false
                    }
                }
                try replier.reply(to: frame, from: mapping.raw, into: &c.output)
                delta.readsAnswered += 1
            }
        } catch {
            replyFailed(c, error)
            return false
        }
        return true
    }

    private func replyFailed(_ c: ServerConnection, _ error: ModbusError) {
        commitCounters()
        events(.replyFailed(c.peer, error))
        closeConnection(c, .socketError(error.errno))
    }

    /// Sends what the client will take without blocking; keeps the rest for EPOLLOUT.
    /// False if the connection was closed.
    func flush(_ c: ServerConnection) -> Bool {
        while c.pendingOutput > 0 {
            let e: Int32
            do {
                let n = try SystemCall.retrying {
                    c.output.withUnsafeBytes {
                        send(c.fd, $0.baseAddress! + c.outputOffset, c.pendingOutput, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                    }
                }
                if n > 0 {
                    c.outputOffset += n
                    c.stalledSince = 0
                    continue
                }
                e = EIO  // send never returns 0 for a non-empty buffer
            } catch {
                e = error.rawValue
            }
            if e == EAGAIN || e == EWOULDBLOCK {
                if c.stalledSince == 0 { c.stalledSince = now }
                break
            }
            closeConnection(c, e == EPIPE || e == ECONNRESET ? .peerClosed : .socketError(e))
            return false
        }
        if c.pendingOutput == 0 {
            c.output.removeAll(keepingCapacity: true)
            c.outputOffset = 0
            c.stalledSince = 0
        } else if c.outputOffset > 16 * 1024 {
            c.output.removeFirst(c.outputOffset)
            c.outputOffset = 0
        }
        updateInterest(c)
        return true
    }

    /// Waits for EPOLLOUT while replies are pending; stops reading while too many are (a client
    /// that does not read its replies must not make the server buffer without bound) or while
    /// its listener is stalled.
    func updateInterest(_ c: ServerConnection) {
        var want: UInt32 = 0
        if c.pendingOutput < ServerLoop.outputHighWater && !isStalled(c) { want |= ServerLoop.epollIn }
        if c.pendingOutput > 0 { want |= ServerLoop.epollOut }
        if want != c.registered {
            var ev = epoll_event()
            ev.events = want
            ev.data.fd = c.fd
            _ = epoll_ctl(epollFd, EPOLL_CTL_MOD, c.fd, &ev)
            c.registered = want
        }
    }
}
