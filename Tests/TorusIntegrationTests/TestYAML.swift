/// The small LLaMA `model:` section the integration tests' configs share.
enum TestYAML {
    static func model(ffn: Int = 64, layers: Int = 2, vocab: Int = 256, maxPositions: Int = 64) -> String {
        """
        model:
          hidden_size: 32
          intermediate_size: \(ffn)
          num_hidden_layers: \(layers)
          num_attention_heads: 4
          num_key_value_heads: 2
          vocab_size: \(vocab)
          max_position_embeddings: \(maxPositions)
        """
    }

    /// A 3-step `seed:` + `train:` + `data:` section on the synthetic corpus, writing to `out`.
    static func shortRun(out: String, heldout: String) -> String {
        """
        seed: 2
        train:
          steps: 3
          batch_size: 4
          seq_len: 32
          log_every: 1
          out: \(out)
        data:
          synth_examples: 200
          heldout: \(heldout)
        """
    }
}
