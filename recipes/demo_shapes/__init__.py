"""The recipe behind the bundled pali-demo-shapes model: its tokenizer, vision pretraining,
training and held-out evaluation. The scene generator it trains on (engine.demo.shapes) and the
trained weights (engine/demo_model/) are installed with pali; this recipe is not.

    python -m recipes.demo_shapes.train --out DIR    # retrain from scratch (about 30 min, 2 cores)
    python -m recipes.demo_shapes.evaluate           # held-out caption/VQA/detection scores
"""
