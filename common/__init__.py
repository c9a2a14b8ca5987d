"""What every layer uses: progress lines and the names the model and its clients share.

The project's packages are layered, each importing only from those before it:
common -> schema -> serving -> retrieval -> model -> components -> pipeline -> run_pipeline.py
(datagen, bench and tests sit on top). tests/test_layers.py checks it.
"""

LAYERS = ("common", "schema", "serving", "retrieval", "model", "components", "pipeline")  # the packages, lowest first
