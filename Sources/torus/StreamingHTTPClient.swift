import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client for load generation against `http://host:port` (plain TCP,
/// one connection per request): sends a JSON POST and hands each server-sent `data:` event to
/// a callback as it arrives (chunked or length-delimited bodies).
struct StreamingHTTPClient {
    let host: String
    let port: Int
    var apiKey: String?

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses `http://host:port` (no path, no TLS).
    init(base: String, apiKey: String?) throws {
        guard let url = URL(string: base), url.scheme == "http", let host = url.host else {
            throw Failure(description: "--base \(base): expected http://HOST:PORT")
        }
        self.host = host
        self.port = url.port ?? 80
        self.apiKey = apiKey
    }

    /// POSTs `body` to `path`; `onEvent` gets each `data:` payload. Returns the HTTP status and,
    /// for a non-streaming answer, the body.
    func post(path: String, body: Data, onEvent: (String) -> Void) throws -> (status: Int, body: String) {
        let fd = try connect()
        defer { close(fd) }
        var head = "POST \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        if let apiKey { head += "Authorization: Bearer \(apiKey)\r\n" }
        head += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        try send(fd, Data(head.utf8) + body)
        var reader = Reader(fd: fd)
        let statusLine = try reader.line()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw Failure(description: "bad status line \(statusLine)") }
        var chunked = false, length: Int?
        while true {
            let h = try reader.line()
            if h.isEmpty { break }
            let lower = h.lowercased()
            if lower.hasPrefix("transfer-encoding:") && lower.contains("chunked") { chunked = true }
            if lower.hasPrefix("content-length:") { length = Int(lower.dropFirst(15).trimmingCharacters(in: .whitespaces)) }
        }
        var pending = Data(), all = Data()
        func consume(_ data: Data) {
            all += data
            pending += data
            while let r = pending.range(of: Data("\n\n".utf8)) {
                let event = String(decoding: pending[pending.startIndex..<r.lowerBound], as: UTF8.self)
                pending.removeSubrange(pending.startIndex..<r.upperBound)
                for line in event.split(separator: "\n") where line.hasPrefix("data:") {
                    onEvent(String(line.dropFirst(5)).trimmingCharacters(in: .whitespaces))
                }
            }
        }
        if chunked {
            while true {
                let sizeLine = try reader.line()
                guard let size = Int(sizeLine.split(separator: ";").first ?? "", radix: 16) else {
                    throw Failure(description: "bad chunk size \(sizeLine)")
                }
                if size == 0 { break }
                consume(try reader.bytes(size))
                _ = try reader.line()
            }
        } else if let length {
            consume(try reader.bytes(length))
        } else {
            consume(try reader.rest())
        }
        return (status, String(decoding: all, as: UTF8.self))
    }

    private func connect() throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            throw Failure(description: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        guard Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "cannot connect to \(host):\(port): \(message)")
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    private func send(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var sent = 0
            while sent < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
                sent += n
            }
        }
    }

    /// Buffered reads from a socket.
    struct Reader {
        let fd: Int32
        var buffer = Data()
        /// Receive space, allocated once per connection.
        var chunk = [UInt8](repeating: 0, count: 65536)

        init(fd: Int32) { self.fd = fd }

        mutating func fill() throws -> Bool {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n < 0 { throw Failure(description: "recv: \(String(cString: strerror(errno)))") }
            if n == 0 { return false }
            buffer += chunk[0..<n]
            return true
        }

        mutating func line() throws -> String {
            while true {
                if let r = buffer.range(of: Data("\r\n".utf8)) {
                    let text = String(decoding: buffer[buffer.startIndex..<r.lowerBound], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex..<r.upperBound)
                    return text
                }
                guard try fill() else { throw Failure(description: "connection closed mid-response") }
            }
        }

        mutating func bytes(_ count: Int) throws -> Data {
            while buffer.count < count { guard try fill() else { throw Failure(description: "connection closed mid-body") } }
            let out = buffer.prefix(count)
            buffer.removeFirst(count)
            return Data(out)
        }

        mutating func rest() throws -> Data {
            while try fill() {}
            defer { buffer.removeAll() }
            return buffer
        }
    }
}
