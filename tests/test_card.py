"""kws_export.card: what an export's kws.model_card keeps of its checkpoint's record."""

from kws_export.card import card_data, card_metrics, real_summary

REAL = {
    "clips": {"au_fa_fr": 1.3983498611115891e-05, "recall_at_0.1pct_far": 0.75, "recall_at_1pct_far": 0.9375,
              "keyword_clips": 16, "at_threshold": {"recall": 0.81}, "silence": {"clips": 408}},
    "dev_set": {"dir": "../shared/real", "speech_clips": 5410},
    "stream": {"hours": 2.065663333333333, "curve": [{"threshold": 0.5, "hits": 15}] * 8,
               "sweep": [{"max_false_alarms_per_hour": 1.0, "hits": 9}] * 3,
               "at_threshold": {"hits": 9, "keywords": 16, "false_alarms_per_hour": 0.9682119867871338,
                                "detections": 11}},
    "threshold": 0.71, "threshold_source": "real stream: lowest threshold with <= 1 false alarms per hour",
}


def test_real_summary_keeps_the_headline():
    assert real_summary(REAL) == {
        "clips_au_fa_fr": 1.398e-05, "clips_recall_at_0.1pct_far": 0.75, "clips_recall_at_1pct_far": 0.9375,
        "clips_keyword_clips": 16, "stream_hits": 9, "stream_keywords": 16, "stream_false_alarms_per_hour": 0.9682,
        "stream_hours": 2.066, "threshold": 0.71,
        "threshold_source": "real stream: lowest threshold with <= 1 false alarms per hour"}
    assert real_summary({}) == {} and real_summary({"clips": "?", "stream": 3}) == {}


def test_card_metrics_drop_what_the_file_or_checkpoint_holds():
    metrics = {"au_fa_fr": 0.00023134776516343047, "split": "test", "clips": 1870, "params": 4367,
               "int8_bytes": 5132, "macs_per_second_network": 96250.0, "costs": {"fp16_bytes": 8734},
               "streaming": {"hits": 35, "f1": 0.92}, "history": [1, 2, 3], "real": REAL,
               "validation": {"au_fa_fr": 0.005901512768452058, "clips": 1870, "fp32_bytes": 4}}
    card = card_metrics(metrics)
    assert card == {"au_fa_fr": 0.0002313, "split": "test", "clips": 1870, "real": real_summary(REAL),
                    "validation": {"au_fa_fr": 0.005902, "clips": 1870}}
    assert card_metrics(None) == {} and card_metrics({"x": float("nan")})["x"] != 0.0


def test_card_data_keeps_the_command_and_the_engines():
    data = {"corpus": "data/sheila_b", "random_split_seed": None, "synth_command": "kws-train synth --keyword sheila",
            "synth": {"engines": ["espeak", "flite"], "clips": {"train": 10}, "voices_used": {"train": 653}, "seed": 0},
            "augment": {"noise": True}}
    assert card_data(data) == {"corpus": "data/sheila_b", "random_split_seed": None,
                               "synth_command": "kws-train synth --keyword sheila",
                               "synth": {"engines": ["espeak", "flite"], "clips": {"train": 10}}}
    assert card_data("synth") == {}
