import Foundation
import Testing
import TorusModel
@testable import TorusTrain

@Suite struct RAGCorpusTests {
    let corpus = RAGCorpus(seed: 3)

    @Test func promptsHoldSixToTenDocumentsOfTheRightSizeAndTheAnswer() {
        var kinds: [String: Int] = [:]
        for i in 0..<200 {
            let e = corpus.example(i, split: "heldout")
            kinds[e.kind, default: 0] += 1
            #expect((6...10).contains(e.documents.count), "\(e.documents.count) documents")
            for d in e.documents {
                #expect(d.hasPrefix("Doc: ") && d.hasSuffix("\n"))
                #expect((150...420).contains(d.utf8.count), "document of \(d.utf8.count) bytes: \(d)")
            }
            #expect(e.question.hasPrefix("Q: ") && e.question.hasSuffix("\nA:"))
            #expect(e.documents.contains { $0.contains(e.value) }, "answer \(e.value) in no document")
            #expect(e.answer.hasSuffix(" \(e.value)."), "answer line \(e.answer) does not end with \(e.value)")
            // Each sentence of the answer line is copied from one document (a sister's link is
            // stated there as "the person in the previous document").
            for sentence in e.answer.components(separatedBy: ". ").map({ $0.hasSuffix(".") ? $0 : $0 + "." }) {
                let stated = sentence.replacingOccurrences(of: #"^\S+ has a sister"#, with: "The person in the previous document has a sister",
                                                           options: .regularExpression)
                #expect(e.documents.contains { $0.contains(stated) }, "'\(sentence)' is stated in no document")
            }
            #expect(e.answer.components(separatedBy: ". ").count == e.hops, "\(e.answer)")
            #expect(e.prompt == e.documents.joined() + e.question)
        }
        #expect(kinds["single", default: 0] > 60 && kinds["friend", default: 0] > 30 && kinds["previous", default: 0] > 20, "\(kinds)")
    }

    /// Longer documents (for chunks of 200 tokens and more) hold the same people and facts, filled
    /// to the asked length with filler repeated once all of it has been used.
    @Test func longerDocumentsKeepTheFactsAndReachTheirLength() {
        let long = RAGCorpus(seed: 3, documentBytes: 900...1_199)
        let short = corpus.world(2, split: "heldout", count: RAGCorpus.peoplePerWorld)
        let people = long.world(2, split: "heldout", count: RAGCorpus.peoplePerWorld)
        for (p, q) in zip(people, short) {
            #expect(p.name == q.name && p.city == q.city && p.job == q.job && p.friend == q.friend)
            #expect((900...1_300).contains(p.document.utf8.count), "document of \(p.document.utf8.count) bytes")
            #expect(p.document.contains(RAGCorpus.cityFact(p.name, p.city)) && p.document.contains(RAGCorpus.jobFact(p.name, p.job)))
        }
        let e = long.example(1, split: "heldout")
        #expect(e.documents.contains { $0.contains(e.value) } && e.answer.hasSuffix(" \(e.value)."))
    }

    /// With moved sisters a "previous" question asks about whoever stands before the sister's
    /// document in that prompt, not its own person, who is left out; the answer reads that
    /// document.
    @Test func movedSistersFollowAnotherPerson() {
        var moved = RAGCorpus(seed: 3)
        moved.movedSisters = true
        let people = moved.world(0, split: "heldout", count: RAGCorpus.peoplePerWorld)
        var seen = 0
        for i in 0..<RAGCorpus.questionsPerWorld * 8 {
            let e = moved.example(i, split: "heldout", world: 0, people: people)
            guard e.kind == "previous" else { continue }
            seen += 1
            let asked = e.question.components(separatedBy: "sister of ").last?.components(separatedBy: " ").first?
                .trimmingCharacters(in: CharacterSet(charactersIn: "?")) ?? ""
            guard let at = e.documents.firstIndex(where: { $0.hasPrefix("Doc: ") && $0.contains("\(asked) lives in") }),
                  at + 1 < e.documents.count else { Issue.record("\(asked)'s document is not followed by another"); continue }
            let sister = e.documents[at + 1]
            #expect(sister.contains("previous document") && sister.contains(e.value))
            let owner = people.first { $0.sister?.document == sister }
            #expect(owner != nil && owner?.name != asked && !e.documents.contains(owner?.document ?? ""), "\(e.question)")
            #expect(e.answer.hasPrefix("\(asked) has a sister named "))
        }
        #expect(seen > 3)
        #expect(RAGCorpus(seed: 3).example(5, split: "heldout") == corpus.example(5, split: "heldout"))
    }

    /// With all sisters, every person in a prompt who has a sister is followed by her document.
    @Test func allSistersFollowEveryPersonWhoHasOne() {
        var crowded = RAGCorpus(seed: 3)
        crowded.allSisters = true
        let people = crowded.world(1, split: "heldout", count: RAGCorpus.peoplePerWorld)
        var followed = 0
        for i in 0..<RAGCorpus.questionsPerWorld {
            let e = crowded.example(i, split: "heldout", world: 1, people: people)
            for p in people {
                guard let s = p.sister, let at = e.documents.firstIndex(of: p.document) else { continue }
                #expect(at + 1 < e.documents.count && e.documents[at + 1] == s.document, "\(p.name)'s sister's document does not follow")
                followed += 1
            }
        }
        #expect(followed > 8)
    }

    /// A "previous" question's sister document stands right after its person's document, and the
    /// asked-about name appears in no other document of the prompt as the person described.
    @Test func aSisterDocumentFollowsItsPerson() {
        var seen = 0
        for i in 0..<200 {
            let e = corpus.example(i, split: "train")
            guard e.kind == "previous" else { continue }
            seen += 1
            let name = e.question.components(separatedBy: "sister of ").last?.components(separatedBy: " ").first?
                .trimmingCharacters(in: CharacterSet(charactersIn: "?")) ?? ""
            let own = e.documents.firstIndex { $0.contains("\(name) lives in") }
            #expect(own != nil, "\(name)")
            if let own {
                #expect(own + 1 < e.documents.count && e.documents[own + 1].contains("previous document") && e.documents[own + 1].contains(e.value))
            }
        }
        #expect(seen > 10)
    }

    /// Link questions ask for the friend each document names and the sister a following
    /// document names, answered as the two-document answers begin; the documents, the asked
    /// question and the other extra questions stay as they were.
    @Test func linkQuestionsAskForTheNamedFriendAndSister() {
        var linked = RAGCorpus(seed: 3)
        linked.linkQuestions = true
        var friends = 0, sisters = 0
        for i in 0..<64 {
            let plain = corpus.example(i, split: "train"), e = linked.example(i, split: "train")
            #expect(e.documents == plain.documents && e.question == plain.question && e.answer == plain.answer)
            let added = e.extra.filter { !plain.extra.contains($0) }
            #expect(Set(plain.extra.map(\.question)).isSubset(of: Set(e.extra.map(\.question))))
            for qa in added {
                #expect(qa.question.hasPrefix("Q: Who is the "), "\(qa.question)")
                let name = qa.question.components(separatedBy: " of ").last?.replacingOccurrences(of: "?\nA:", with: "") ?? ""
                guard let own = e.documents.firstIndex(where: { $0.contains("\(name) lives in") }) else {
                    Issue.record("\(name)'s document is not in the prompt"); continue
                }
                if qa.question.contains("friend") {
                    friends += 1
                    #expect(qa.answer.hasPrefix("\(name) is a friend of ") && e.documents[own].contains(qa.answer), "\(qa.answer)")
                } else {
                    sisters += 1
                    let sister = qa.answer.replacingOccurrences(of: "\(name) has a sister named ", with: "The person in the previous document has a sister named ")
                    #expect(own + 1 < e.documents.count && e.documents[own + 1].contains(sister), "\(qa.answer)")
                }
            }
        }
        #expect(friends > 50 && sisters > 5, "\(friends) friend and \(sisters) sister link questions")
    }

    @Test func documentsRecurAcrossQuestionsOfOneWorldAndSplitsDiffer() {
        let a = Set((0..<RAGCorpus.questionsPerWorld).flatMap { corpus.example($0, split: "heldout").documents })
        let all = (0..<RAGCorpus.questionsPerWorld).flatMap { corpus.example($0, split: "heldout").documents }
        #expect(all.count > a.count, "no document recurs within a world")
        #expect(corpus.example(5, split: "heldout") == RAGCorpus(seed: 3).example(5, split: "heldout"))
        #expect(corpus.example(5, split: "heldout") != corpus.example(5, split: "train"))
        #expect(corpus.text(count: 3, split: "train").components(separatedBy: "\n\n").count == 4)
    }

    /// Training windows hold one whole example each (documents, then questions with answers),
    /// padded to the window; the question mask covers the questions and answers only.
    @Test func trainingWindowsKeepEveryQuestionWithItsDocuments() {
        let window = 4096
        let (text, mask) = corpus.trainingWindowsWithMask(count: 12, split: "train", window: window)
        let bytes = Array(text.utf8)
        #expect(bytes.count % window == 0 && bytes.count == mask.count && bytes.count >= 8 * window)
        for w in 0..<(bytes.count / window) {
            let unit = String(decoding: bytes[(w * window)..<((w + 1) * window)], as: UTF8.self)
            let flags = mask[(w * window)..<((w + 1) * window)]
            #expect(unit.hasPrefix("Doc: "))
            let firstQuestion = unit.range(of: "Q: ").map { unit.utf8.distance(from: unit.startIndex, to: $0.lowerBound) } ?? 0
            #expect(firstQuestion > 0 && !flags.prefix(firstQuestion).contains(true), "documents carry no loss")
            #expect(flags.dropFirst(firstQuestion).first == true)
            // Several questions, each answered, none cut: the text after the last answer is padding.
            let questions = unit.components(separatedBy: "\nA: ").count - 1
            #expect(questions >= 4, "\(questions) questions in window \(w)")
            let padded = unit.reversed().prefix { $0 == "\n" }.count
            #expect(!flags.suffix(max(padded - 1, 0)).contains(true))
        }
    }

    /// The default model's tokenizer (configs/rag-tokenizer.json, written by `torus data
    /// tokenizer --synth rag --vocab 2048 --examples 20000`) holds every name of the pool as one
    /// token, so copying a name is one token's work; a whole example round-trips.
    @Test func theDefaultTokenizerHoldsEachNameAsOneToken() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("configs/rag-tokenizer.json").path
        let tokenizer = try TokenizerJSON.load(path: path, modelVocabulary: 1408)
        #expect(RAGCorpus.names.count == 400 && Set(RAGCorpus.names).count == 400)
        let split = RAGCorpus.names.filter { tokenizer.encode(" " + $0).count != 1 }
        #expect(split.isEmpty, "names of several tokens: \(split.prefix(10))")
        let e = corpus.example(7, split: "heldout")
        #expect(tokenizer.decode(tokenizer.encode(e.prompt + " " + e.answer)) == e.prompt + " " + e.answer)
    }
}
