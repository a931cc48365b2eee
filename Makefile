# Every command a reader needs. Each target creates .venv and installs into it when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     := $(sort $(wildcard notebooks/[0-9]*.ipynb))
ROOT   := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lesson lab test test-other-cpu notebooks figures experiments bench clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[lab,test]'
	touch $(STAMP)

install: $(STAMP)

lesson: $(STAMP)  ## the whole pipeline from the command line: pretrain, reward model, PPO, before/after table
	$(PY) -m ppo_lesson run --preset lesson --out runs/lesson

lab: $(STAMP)  ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab $(ROOT) notebooks/

# nbval runs lax: a cell's output is compared only when it starts with `# NBVAL_CHECK_OUTPUT` (outputs that
# cannot depend on training or the CPU); every cell must run without error, and asserts in the cells state
# the lesson's claims about trained results with tolerances. Figures go to a scratch folder, not figures/.
NBVAL  := $(PY) -m pytest --nbval-lax notebooks --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider
SCRATCH_FIGURES := $(CURDIR)/runs/test-figures

test: $(STAMP)  ## lint, unit tests, then every notebook under nbval (leaves tracked files untouched)
	$(VENV)/bin/ruff check .
	PPO_LESSON_FIGURES=$(SCRATCH_FIGURES) $(PY) -m pytest tests
	PPO_LESSON_FIGURES=$(SCRATCH_FIGURES) $(NBVAL)

test-other-cpu: $(STAMP)  ## the notebooks again as on another CPU (ATen's plain kernels), in a fresh stage cache
	rm -rf runs/other-cpu-cache
	ATEN_CPU_CAPABILITY=default PPO_LESSON_CACHE=$(CURDIR)/runs/other-cpu-cache PPO_LESSON_FIGURES=$(SCRATCH_FIGURES) $(NBVAL)

.PHONY: test-lab
test-lab: $(STAMP)  ## every notebook in a real JupyterLab driven by Chromium: Run All, then check what a learner sees
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet -e '.[browser]'
	LAB_CHECK_SELF_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_lab_check.py
	$(PY) tools/lab_check.py --out runs/test-lab

# The classroom: nbgrader (the `teach` extra) builds the student versions and grades them; see TEACHING.md
.PHONY: exercises test-exercises
TEACH := $(VENV)/.teach-installed
$(TEACH): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[lab,test,teach]'
	touch $(TEACH)

exercises: $(TEACH)  ## student versions of notebooks 01-05, built by nbgrader into exercises/release/lesson/
	$(PY) tools/build_exercises.py --course exercises

test-exercises: $(TEACH)  ## nbgrader round trip: generate, autograde a solved (full marks) and an untouched (0) submission
	$(PY) tools/check_exercises.py

notebooks: $(STAMP)  ## re-execute every notebook in place (fresh kernel, one by one), then clean its metadata
	for nb in $(NB); do $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace $$nb || exit 1; done
	$(PY) tools/clean_notebooks.py $(NB)

figures: notebooks experiments  ## every figure under figures/: the notebooks' and the experiments'

experiments: $(STAMP)  ## PPO's claims measured over seeds (about 4.5 minutes on 2 cores with no stage cached)
	$(PY) -m ppo_lesson experiments --out runs/experiments

bench: $(STAMP)  ## speed: KV cache, one PPO iteration split up, each stage of the lesson
	$(PY) -m ppo_lesson bench --out runs/bench

clean-cache:  ## forget the cached pretrained policy and reward model
	rm -rf .cache
