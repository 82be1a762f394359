#!/bin/bash
# The default model's evaluation JSONs (docs/results/default_*.json), rendered into docs/RESULTS.md
# and the README by scripts/render_readme.py. Run from the repository root after `make test` (the
# venv) and `memlong data --out runs/corpus`; one stream takes days on 2 cores, most of it RULER (10 samples a
# task): each line can run on its own, and the long ones continue with --resume.
set -ex
M="${PYTHON:-.venv/bin/python} -m memlong"
$M eval passkey --data runs/corpus --lengths 4096,16384 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong,memlong_no_memory --threads 1 --json docs/results/default_passkey.json --plot docs/results/default_passkey.png
$M eval ppl --data runs/corpus --lengths 16384 --max-documents 3 --methods memlong,memlong_no_memory,base_truncated --threads 2 --json docs/results/default_ppl_test.json
# RULER as RULER defines it (11 of its 13 tasks: qa_1/qa_2 need --qa-squad/--qa-hotpotqa files), 10 samples a task at
# 4k, 16k and 32k; --resume continues a run cut short. At 4k the base model with full attention is the ceiling.
# Each is hours on one thread (measured on a loaded 2-core CPU: base_full at 4k 8-27 min a task, rag at 16k 4-9 min,
# memlong at 16k about 20 min); run them side by side, one thread each.
$M eval ruler --data runs/corpus --lengths 4096 --samples 10 --methods base_full,rag,memlong,memlong_no_memory --threads 1 --resume --json docs/results/default_ruler_4k.json --plot docs/results/default_ruler_4k.png
$M eval ruler --data runs/corpus --lengths 16384 --samples 10 --methods rag,memlong,base_truncated,memlong_no_memory --threads 1 --resume --json docs/results/default_ruler_16k.json --plot docs/results/default_ruler_16k.png
$M eval ruler --data runs/corpus --lengths 32768 --samples 10 --methods rag,memlong,base_truncated,memlong_no_memory --threads 1 --resume --json docs/results/default_ruler_32k.json --plot docs/results/default_ruler_32k.png
$M eval passkey --data runs/corpus --lengths 4096,16384,32768,65536,131072 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods rag --threads 1 --json docs/results/default_passkey_rag.json
# the base model on the last 8,192 tokens (its trained context) of each passkey prompt
$M eval passkey --data runs/corpus --lengths 4096,16384 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods base_truncated --threads 1 --json docs/results/default_passkey_base_truncated.json
$M eval passkey --data runs/corpus --lengths 32768,65536,131072 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1 --methods base_truncated --threads 1 --json docs/results/default_passkey_base_truncated_long.json
# the same model without memory beyond its window (5 depths x 1 trial a length; --resume continues a run cut short)
$M eval passkey --data runs/corpus --lengths 32768,65536 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1 --methods memlong_no_memory --threads 1 --resume --json docs/results/default_passkey_no_memory_long.json
$M eval passkey --data runs/corpus --lengths 131072 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1 --methods memlong_no_memory --threads 1 --resume --json docs/results/default_passkey_no_memory_128k.json
# the base model with full attention where the prompt fits its trained context (8,192 tokens)
$M eval passkey --data runs/corpus --lengths 4096 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods base_full --threads 1 --json docs/results/default_passkey_base_full.json
$M eval passkey --data runs/corpus --lengths 32768 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong --threads 1 --json docs/results/default_passkey_32k.json
# 64k: five depths x 2 trials, about 1.5 hours on one thread; --resume continues a run cut short
$M eval passkey --data runs/corpus --lengths 65536 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong --threads 1 --resume --json docs/results/default_passkey_64k.json
# the 64k passkey with the question's window re-ranking over every banked chunk (default: the top 32 by whole-chunk similarity)
$M eval passkey --data runs/corpus --lengths 65536 --depths 0.1,0.5 --trials 1 --methods memlong --set rerank_candidates=1024 --threads 1 --json docs/results/default_passkey_64k_rerank_all.json
# 128k: five depths x 1 trial, about an hour on one thread (11-12 min a prompt beside another run); --resume continues a run cut short
$M eval passkey --data runs/corpus --lengths 131072 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1 --methods memlong --threads 1 --resume --json docs/results/default_passkey_128k.json
$M eval ppl --data runs/corpus --lengths 4096,8192,16384 --max-documents 2 --methods memlong,base_full --threads 2 --json docs/results/default_ppl_by_length.json --plot docs/results/default_ppl_by_length.png
# perplexity from 4k to 64k, the same 3 longest test documents at every length (about 1.5 hours on one core)
$M eval ppl --data runs/corpus --lengths 4096,8192,16384,32768,65536 --max-documents 3 --methods memlong,memlong_no_memory,base_full,base_truncated --threads 1 --json docs/results/default_ppl_to_64k.json --plot docs/results/default_ppl_to_64k.png
# the same scored text at every length (the last 2,048 of each document's first 64k tokens), 4k to 64k of context
$M eval ppl --data runs/corpus --lengths 4096,8192,16384,32768,65536 --same-text --max-documents 3 --methods memlong,memlong_no_memory,base_full,base_truncated --threads 2 --json docs/results/default_ppl_same_text.json --plot docs/results/default_ppl_same_text.png
# in-context learning with 300 demonstrations in memory (read once per trial), 4 in context
$M eval icl --data corpus-source:runs/corpus --shots-context 4 --shots-memory 300 --trials 3 --max-examples 60 --methods memlong,memlong_no_memory --threads 2 --json docs/results/default_icl.json
# rag: the base model with the top-k of the 300 demonstrations for each input, as text before the 4 in context
$M eval icl --data corpus-source:runs/corpus --shots-context 4 --shots-memory 300 --trials 3 --max-examples 60 --methods rag --threads 1 --json docs/results/default_icl_rag.json
# the base model on the demonstrations' last tokens that fit its window (the 300 do not: in_context is skipped)
$M eval icl --data corpus-source:runs/corpus --shots-context 4 --shots-memory 300 --trials 3 --max-examples 60 --methods base_truncated --threads 1 --json docs/results/default_icl_base_truncated.json
# 40 demonstrations in memory without requery (the test input reads the memory retrieved before it), and the base with every demonstration in context
$M eval icl --data corpus-source:runs/corpus --shots-context 4 --shots-memory 40 --trials 1 --max-examples 20 --no-requery --threads 2 --json docs/results/default_icl_no_requery.json
# why the default keeps 4 sink tokens: the same 4k passkey without them
$M eval passkey --data runs/corpus --lengths 4096 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong --set sink_tokens=0 --threads 2 --json docs/results/default_passkey_no_sink.json
# why the default banks every layer: the same 4k passkey banking only layers 17-30
$M eval passkey --data runs/corpus --lengths 4096 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong --set retrieval_layers=[17,18,19,20,21,22,23,24,25,26,27,28,29,30] --threads 2 --json docs/results/default_passkey_upper_layers.json
# the 11 retrieval heads (chosen on the validation split by memlong heads --retrieval --split validation
# --needles 8 ...), measured against every head before the default model took them with
# question_score_ratio=0.7: add --set question_score_ratio=0 to repeat these exactly. The every-head
# reports that were rerun under today's default are docs/results/every_head_*.json (--set bank_heads=null
# --set question_score_ratio=0 repeats them).
HEADS='bank_heads=[[7, 0], [8, 2], [18, 1], [19, 2], [21, 1], [21, 2], [22, 0], [22, 1], [22, 2], [24, 0], [25, 1]]'
$M demo --threads 1 --set "$HEADS" --json docs/results/demo_bank_heads.json
$M eval passkey --data runs/corpus --lengths 4096,16384 --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --methods memlong --set "$HEADS" --threads 1 --json docs/results/bank_heads_passkey.json
$M eval passkey --data runs/corpus --lengths 32768,65536 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1 --methods memlong --set "$HEADS" --threads 1 --json docs/results/bank_heads_passkey_long.json
$M eval ppl --data runs/corpus --lengths 4096,8192,16384,32768,65536 --same-text --max-documents 3 --methods memlong --set "$HEADS" --threads 1 --json docs/results/bank_heads_ppl_same_text.json
$M eval icl --data corpus-source:runs/corpus --shots-context 4 --shots-memory 300 --trials 3 --max-examples 60 --methods memlong --set "$HEADS" --threads 1 --json docs/results/bank_heads_icl.json
$M eval ruler --data runs/corpus --lengths 16384 --samples 10 --methods memlong --set "$HEADS" --threads 1 --resume --json docs/results/bank_heads_ruler_16k.json
# a million tokens read with nothing evicted (the default capacity holds 1,048,576), both cores, nothing else running
$M bench ingest --model shipped --tokens 1000000 --methods memlong --threads 2 --generate 64 --json docs/results/bench_million_default.json
${PYTHON:-.venv/bin/python} scripts/render_readme.py
