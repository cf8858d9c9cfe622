"""Stage 3, face model: ICT-FaceKit assets, the morphable model, expression categories, correspondence."""
