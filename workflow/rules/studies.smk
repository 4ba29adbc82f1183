# The studies (config `studies`, one module each): their measures along `run`, their scorecard
# rows and their figures, each job hashing only its own study's code.


rule study_measures:
    """A study's per-run measures from the summary and the per-run files it reads."""
    input:
        unpack(study_measure_inputs),
    output:
        f"{OUT}/summary/{{study}}.nc",
    log:
        f"{OUT}/logs/studies/{{study}}/measures.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        study=lambda wc: STUDY_SPECS[wc.study],
        files=lambda wc: study_run_files(wc.study),
        settings=lambda wc: STUDY[wc.study].settings(config),
        code=lambda wc: study_code(wc.study),
    script:
        "../scripts/study_measures.py"


rule study_scorecard:
    """A study's claims checked on the summary (thresholds from config `scorecard`)."""
    input:
        unpack(study_inputs),
    output:
        f"{OUT}/scorecard/{{study}}.csv",
    log:
        f"{OUT}/logs/studies/{{study}}/scorecard.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        study=lambda wc: STUDY_SPECS[wc.study],
        thresholds=lambda wc: {k: config["scorecard"][k] for k in STUDY[wc.study].thresholds},
        code=lambda wc: study_code(wc.study),
    script:
        "../scripts/study_scorecard.py"


rule scorecard:
    """Every study's rows in one table."""
    input:
        [f"{OUT}/scorecard/{study.name}.csv" for study in STUDIES],
    output:
        csv=report(f"{OUT}/scorecard.csv", caption="../report/scorecard.rst", category="Scorecard"),
        provenance=f"{OUT}/scorecard.provenance.json",
    log:
        f"{OUT}/logs/scorecard.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        code=ntksmk.code_hash("ntkpipe.scorecard"),
    script:
        "../scripts/scorecard.py"


# One figures rule per study, so that editing a study redraws its figures only.
for _study in STUDIES:
    if not STUDY_FIGURES[_study.name]:
        continue

    rule:
        name:
            f"figures_{_study.name}"
        input:
            **study_inputs(_study.name),
        output:
            **{
                name: report(
                    f"{OUT}/figures/{name}.png",
                    caption=_study.caption_path(_study.figure(name)),
                    category=_study.title,
                    subcategory=_study.figure(name).group,
                )
                for name in STUDY_FIGURES[_study.name]
            },
        log:
            f"{OUT}/logs/studies/{_study.name}/figures.log",
        localrule: True
        conda:
            CONDA_ENV
        params:
            study=STUDY_SPECS[_study.name],
            code=study_code(_study.name),
        script:
            "../scripts/figures.py"


rule report_page:
    """One page to read the results: the scorecard as a table, every figure at full width with
    its caption under it."""
    input:
        scorecard=f"{OUT}/scorecard.csv",
        figures=FIGURES,
        captions=sorted(
            {
                study.caption_path(study.figure(name))
                for study in STUDIES
                for name in STUDY_FIGURES[study.name]
            }
        ),
    output:
        f"{OUT}/report.html",
    log:
        f"{OUT}/logs/report_page.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        studies=[STUDY_SPECS[study.name] for study in STUDIES],
        figures={study.name: STUDY_FIGURES[study.name] for study in STUDIES},
        title=f"ntkpipe results: {', '.join(ntksweep.active_sweeps(config))}",
        code=ntksmk.code_hash("ntkpipe.report"),
    script:
        "../scripts/report_page.py"
