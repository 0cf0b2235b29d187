"""One config's communication per round: its variant, its sources per round, its model and, where the data is
prepared, each source's real table size, taken as the run's coordinator takes them (a TRIM/SPEC source holds
|V_k| = `trim_vocab.npy` rows; a SPEC-OPT source its own tokenizer's vocabulary). Without prepared data the sizes
are the config's requested tokenizer sizes, with every global row held: an estimate.

This is a formula from sizes. A run counts, in each `round` line of metrics.jsonl, the bytes its engine really
moved for the sources it drew that round; on the local engine those equal these per-source figures (tests check).
"""

from __future__ import annotations

from dataclasses import dataclass

from dept.algorithm.compression import scheme_of
from dept.algorithm.variants import spec_of
from dept.config import Config, Variant
from dept.data.prepared import OWN, PreparedData
from dept.errors import DeptError
from dept.eval.comms import CommsRow, body_parameters_of, body_scale_count_of, comms_row


@dataclass(frozen=True)
class ConfigComms:
    variant: Variant
    local_steps: int
    sources: int  # K: the trained sources
    sources_per_round: int  # M: drawn each round
    body: int
    d_model: int
    global_vocab: int
    positions: int  # learned position rows (0 = RoPE)
    compression: str | None  # the upload's scheme
    body_scales: int
    per_source: dict[str, CommsRow]  # one drawn source's traffic per round, by name
    own_vocab: dict[str, int]  # SPEC-OPT's table rows, by source
    trim_rows: dict[str, int]  # |V_k| (estimate: all of V), by source
    sizes_from: str  # where the table sizes came from, in words
    measured: bool  # True: the prepared data's sizes; False: the config's, an estimate

    @property
    def baseline(self) -> bool:
        return spec_of(self.variant).baseline

    def round_bytes(self, names: list[str]) -> tuple[int, int]:
        """Bytes down and up of a round that drew `names` (what the sum over a `round` line's bytes_down and
        bytes_up comes to, for the DEPT variants)."""
        return (sum(self.per_source[n].bytes_down for n in names), sum(self.per_source[n].bytes_up for n in names))

    def round_range(self) -> tuple[int, float, int]:
        """Down + up of one round: the least and most over every draw of M sources, and the mean draw."""
        totals = [r.bytes_down + r.bytes_up for r in self.per_source.values()]
        mean = sum(totals) / len(totals) * self.sources_per_round
        if len(set(totals)) == 1:
            return round(mean), mean, round(mean)
        ordered = sorted(totals)
        m = self.sources_per_round
        return sum(ordered[:m]), mean, sum(ordered[-m:])

    def describe(self) -> list[str]:
        """Two lines: the config's figure, and how it relates to what a run counts."""
        least, mean, most = self.round_range()
        spread = "" if least == most else \
            f" for a mean draw ({least / 1e6:,.2f}–{most / 1e6:,.2f} MB by which are drawn)"
        name = self.variant.value.upper().replace("_", "-")
        first = (f"this config: {name}, M = {self.sources_per_round} of K = {self.sources} sources a round, "
                 f"N = {self.local_steps}: {mean / 1e6:,.2f} MB down + up a round{spread}; table sizes "
                 f"{self.sizes_from}")
        if self.baseline:
            second = ("a formula from sizes: a run records it as std_bytes_per_source per sampled source and "
                      "results.json's bytes_moved (N all-reduces; nothing travels between rounds)")
        else:
            second = ("a formula from sizes: a run counts in metrics.jsonl the bytes its engine really moved for the "
                      "sources it drew each round (Flower adds message framing), results.json their sum"
                      + ("" if self.measured else "; `dept prepare` gives the real table sizes"))
        return [first, second]


def config_comms(cfg: Config) -> ConfigComms:
    """The config's per-source traffic per round, from the prepared data's sizes where they can be read."""
    m, t = cfg.model, cfg.train
    trained = [s.name for s in cfg.trained_sources]
    positions = m.max_seq_len if m.positions == "learned" else 0
    scheme = scheme_of(t.compression, t.compression_scale)
    try:
        data = PreparedData(cfg.data_dir)
        global_vocab = data.global_vocab_size
        trim_rows = {n: int(data.source(n).trim_vocab().size) for n in trained}
        own_vocab = {n: data.source(n).vocab_size(OWN) for n in trained}
        sizes_from, measured = f"from the prepared data in {cfg.data_dir}", True
    except (DeptError, OSError, KeyError) as err:
        global_vocab = cfg.data.tokenizer.global_.vocab_size
        trim_rows = dict.fromkeys(trained, global_vocab)
        own_vocab = dict.fromkeys(trained, cfg.data.tokenizer.per_source.vocab_size)
        why = str(err).split(":")[0] if isinstance(err, DeptError) else f"unreadable ({err})"
        sizes_from, measured = (f"estimated from the config (tokenizers at their requested sizes, TRIM/SPEC holding "
                                f"every row): {why}"), False
    body = body_parameters_of(m)
    scales = body_scale_count_of(m, t.compression_scale)
    rows = {n: comms_row(t.variant, body, m.d_model, global_vocab, t.local_steps, trim_rows=trim_rows[n],
                         own_vocab=own_vocab[n], positions=positions, compression=scheme, body_scales=scales)
            for n in trained}
    return ConfigComms(t.variant, t.local_steps, len(trained), cfg.sources_per_round, body, m.d_model, global_vocab,
                       positions, scheme, scales, rows, own_vocab, trim_rows, sizes_from, measured)

