import Foundation
import Testing
@testable import TorusTensor

/// `Tensor.populate` backs a lazily mapped tensor's pages without touching its contents.
@Suite struct TensorPopulateTests {
    @Test func populateKeepsContentsAndBacksThePages() throws {
        let t = Tensor(lazyZeros: [3 << 20])   // 12 MiB
        t.pointer[5] = 7
        t.pointer[(3 << 20) - 1] = -2
        let supported = t.populate(from: 0, count: t.count * 4)
        let uname = try String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)
        let version = uname.split(separator: ".").prefix(2).compactMap { Int($0.prefix(while: \.isNumber)) }
        if version.count == 2, version[0] > 5 || (version[0] == 5 && version[1] >= 14) { #expect(supported, "Linux \(uname)") }
        #expect(t.pointer[5] == 7 && t.pointer[(3 << 20) - 1] == -2 && t.pointer[1 << 20] == 0)
        #expect(!t.populate(from: 4, count: t.count * 4), "a range past the end")
        #expect(!Tensor(shape: [2], values: [1, 2]).populate(from: 0, count: 8), "heap memory")
    }
}
